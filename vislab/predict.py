"""Predicting on image or video files with trained weights, rebuilding the model from their
metadata: top-k classes for a classifier; boxes, classes, scores and masks for a detector;
multi-view top-k classes for a video model; boxes and actions for an action detector
(``vislab.predict_actions``)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from vislab.config import load_config, model_kwargs
from vislab.data.datasets.image_folder import read_rgb
from vislab.engine.checkpoint import resolve_weights
from vislab.models import create_model
from vislab.models.detection.postprocess import to_original_size
from vislab.models.registry import get_entry
from vislab.tasks.classification import classifier_from_config, eval_transform_from
from vislab.utils.finite import check_finite
from vislab.weights import WeightsError, load_state_dict, read_weights


BROKEN_WEIGHTS = "these weights are broken (saved from a run that diverged?)"


@dataclass
class Predictor:
    model: nn.Module
    transform: object
    classes: list[str]

    @torch.no_grad()
    def predict(self, paths: Sequence[str | Path], *, topk: int = 5) -> list[list[tuple[str, float]]]:
        """The ``topk`` (class name, probability) pairs of each image."""
        batch = torch.stack([self.transform(read_rgb(p)) for p in paths])
        logits = self.model(batch)
        check_finite(logits, what=f"the model's output for {', '.join(map(str, paths))}",
                     consequence=BROKEN_WEIGHTS)
        probs = logits.float().softmax(dim=1)
        values, indices = probs.topk(min(topk, probs.shape[1]), dim=1)
        return [[(self.classes[i], float(v)) for v, i in zip(vs.tolist(), ix.tolist())]
                for vs, ix in zip(values, indices)]


@dataclass
class DetectionPredictor:
    model: nn.Module
    transform: object
    classes: list[str]

    @torch.no_grad()
    def predict(self, path: str | Path) -> dict[str, torch.Tensor]:
        """Detections on the image at its own resolution: ``boxes`` (xyxy), ``scores``,
        ``labels`` and, for Mask R-CNN, bool ``masks`` [N, H, W]."""
        image = read_rgb(path)
        tensor = self.transform(image)
        size = tuple(tensor.shape[-2:])
        detections = self.model(tensor[None], [size])
        check_finite(detections, what=f"the model's output for {path}",
                     consequence=BROKEN_WEIGHTS)
        return to_original_size(detections, input_sizes=[size], original_sizes=[(image.height, image.width)])[0]


@dataclass
class VideoPredictor:
    model: nn.Module
    views: object
    classes: list[str]
    num_frames: int
    stride: int
    num_clips: int

    @torch.no_grad()
    def predict(self, path: str | Path, *, topk: int = 5) -> tuple[list[tuple[str, float]], int]:
        """The ``topk`` (class, probability) pairs of a video, its softmax averaged over
        ``num_clips`` uniformly spaced clips x the crops of ``views``, and the number of views."""
        from vislab.data.video.decode import VideoReader
        from vislab.data.video.sampling import test_clip_indices

        with VideoReader(path) as video:
            clips = test_clip_indices(num_frames_video=video.num_frames, num_frames=self.num_frames,
                                      stride=self.stride, num_clips=self.num_clips)
            frames = video.frames([i for clip in clips for i in clip])
        views = torch.stack([view for clip in frames.split(self.num_frames) for view in self.views(clip)])
        logits = self.model(views)
        check_finite(logits, what=f"the model's output for {path}",
                     consequence=BROKEN_WEIGHTS)
        probs = logits.float().softmax(dim=1).mean(dim=0)
        values, indices = probs.topk(min(topk, probs.numel()))
        return [(self.classes[i], float(v)) for v, i in zip(values.tolist(), indices.tolist())], len(views)


def _config_and_classes(path: Path, metadata: dict, model_name: str | None) -> tuple[DictConfig, list[str]]:
    if "config" in metadata:
        return OmegaConf.create(metadata["config"]), list(metadata["classes"])
    name = model_name or metadata.get("model")
    if name is None:
        raise WeightsError(f"{path} carries no model name; pass --model NAME")
    entry = get_entry(name)
    options = metadata.get("options", {})
    overrides = [f"model.name={name}", f"task={entry.task}", *(f"model.{k}={v}" for k, v in options.items())]
    if entry.task == "classification":
        overrides.append(f"data.image_size={options.get('img_size', entry.input_size[-1])}")
    num_classes = int(metadata.get("num_classes") or entry.num_classes)
    return load_config(None, overrides), [str(i) for i in range(num_classes)]


def load_trained_model(weights: str | Path, *, model_name: str | None = None) -> tuple[nn.Module, DictConfig, list[str]]:
    """The classifier, detector or video model that ``weights`` hold, in eval mode, with the
    config that built it and its class names: from vislab weights' metadata (the run's config and
    classes) or, for converted weights, from the model name and options in their metadata (or
    ``model_name``), with the schema's ImageNet normalisation and input size."""
    path = resolve_weights(weights)
    state_dict, metadata = read_weights(path)
    cfg, classes = _config_and_classes(path, metadata, model_name)
    if cfg.task in ("video", "detection", "action_detection"):
        model = create_model(cfg.model.name, num_classes=len(classes), **model_kwargs(cfg))
    elif cfg.task == "classification":
        model = classifier_from_config(cfg, num_classes=len(classes))
    else:
        raise WeightsError(f"{path} holds a {cfg.task} model ({cfg.model.name}); only classifiers, detectors "
                           f"and video models run on their own; load its backbone with pretrained=...")
    load_state_dict(model, state_dict, strict=True, source=f"weights file {path}")
    return model.eval(), cfg, classes


def load_predictor(weights: str | Path, *, model_name: str | None = None):
    """A predictor for the model ``weights`` hold (``load_trained_model``): ``Predictor``,
    ``DetectionPredictor``, ``VideoPredictor`` or ``ActionPredictor``."""
    from vislab.data.transforms.ava import actor_test_transform
    from vislab.predict_actions import ActionPredictor
    from vislab.tasks.detection import eval_transform_of
    from vislab.tasks.video import eval_views_of

    model, cfg, classes = load_trained_model(weights, model_name=model_name)
    if cfg.task == "action_detection":
        d = cfg.data
        transform = actor_test_transform(short_side=d.test_short_side, mean=d.mean, std=d.std,
                                         centre_crop=d.test_centre_crop)
        return ActionPredictor(model=model, transform=transform, classes=classes, num_frames=d.num_frames,
                               stride=d.frame_stride, first_second=d.first_second)
    if cfg.task == "video":
        d = cfg.data
        return VideoPredictor(model=model, views=eval_views_of(cfg), classes=classes, num_frames=d.num_frames,
                              stride=d.frame_stride, num_clips=d.test_clips)
    if cfg.task == "detection":
        return DetectionPredictor(model=model, transform=eval_transform_of(cfg), classes=classes)
    return Predictor(model=model, transform=eval_transform_from(cfg), classes=classes)
