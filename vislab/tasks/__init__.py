"""Tasks turn a config into a model, data, a loss and an evaluation for the trainer."""
from __future__ import annotations

from omegaconf import DictConfig


def build_task(cfg: DictConfig):
    if cfg.task == "classification":
        from vislab.tasks.classification import ClassificationTask

        return ClassificationTask(cfg)
    raise ValueError(f"unknown task {cfg.task!r}")
