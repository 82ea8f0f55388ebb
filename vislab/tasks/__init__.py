"""Tasks turn a config into a model, data, a loss and an evaluation for the trainer."""
from __future__ import annotations

from omegaconf import DictConfig

from vislab.config import ConfigError
from vislab.models.registry import get_entry


def build_task(cfg: DictConfig):
    entry = get_entry(cfg.model.name)
    if entry.task != cfg.task:
        raise ConfigError(f"model.name={cfg.model.name} is a {entry.task} model, but task={cfg.task}; "
                          f"`vislab models --task {cfg.task}` lists the {cfg.task} models")
    if cfg.task == "classification":
        from vislab.tasks.classification import ClassificationTask

        return ClassificationTask(cfg)
    if cfg.task == "detection":
        from vislab.tasks.detection import DetectionTask

        return DetectionTask(cfg)
    if cfg.task == "pretrain":
        from vislab.tasks.pretrain import PretrainTask

        return PretrainTask(cfg)
    if cfg.task == "video":
        from vislab.tasks.video import VideoTask

        return VideoTask(cfg)
    if cfg.task == "action_detection":
        from vislab.tasks.action_detection import ActionDetectionTask

        return ActionDetectionTask(cfg)
    raise ValueError(f"unknown task {cfg.task!r}")
