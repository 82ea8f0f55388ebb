"""Actor-centric action detection (AVA): clips centred on keyframes, a video backbone with the
actor RoI head, binary cross-entropy over the actions of each box, and frame-level mAP at IoU 0.5
as the ActivityNet AVA evaluator computes it."""
from __future__ import annotations

from functools import cached_property
from pathlib import Path

import torch
from omegaconf import DictConfig
from torch import nn
from torch.nn import functional as F

from vislab.config import ConfigError, model_kwargs
from vislab.data.datasets.ava import ActorClips, actor_boxes, actor_clips, frame_source
from vislab.data.datasets.ava_files import (Detection, LabelMap, read_annotations, read_exclusions, read_label_map,
                                            read_proposals, write_detections)
from vislab.data.datasets.moving_actors import ensure_moving_actors
from vislab.data.loader import collate_actors
from vislab.data.transforms.ava import actor_test_transform, actor_train_transform
from vislab.engine.distributed import DistInfo
from vislab.evaluation.ava import frame_map, write_per_class_table
from vislab.models import create_model
from vislab.tasks.initial_weights import load_initial_weights
from vislab.tasks.loaders import train_loader, val_loader

DEFAULT_MOVING_ACTORS_ROOT = "data/moving_actors"
PATH_KEYS = ("frames", "videos", "train_frame_list", "val_frame_list", "train_annotations", "val_annotations",
             "label_map", "eval_label_map", "val_exclusions", "train_proposals", "val_proposals")


def action_detection_paths(cfg: DictConfig) -> dict[str, Path | None]:
    """The set's files, ``data.<key>`` under ``data.root`` (an absolute path stays as it is), after
    generating the moving-actors set there if that is the set; ``eval_label_map`` defaults to
    ``label_map``."""
    d = cfg.data
    root = Path(d.root or (DEFAULT_MOVING_ACTORS_ROOT if d.name == "moving_actors" else "."))
    if d.name == "moving_actors":
        ensure_moving_actors(root, train=d.synthetic_train, val=d.synthetic_val, seed=d.synthetic_seed)
    paths = {key: root / d[key] if d[key] else None for key in PATH_KEYS}
    for key in ("train_annotations", "val_annotations", "label_map"):
        if paths[key] is None:
            raise ConfigError(f"data.{key} is not set: action detection needs it (a path under data.root)")
    paths["eval_label_map"] = paths["eval_label_map"] or paths["label_map"]
    return paths


class ActionDetectionTask:
    primary_metric = "mAP"

    def __init__(self, cfg: DictConfig):
        self.cfg = cfg
        self.paths = action_detection_paths(cfg)

    @cached_property
    def label_map(self) -> LabelMap:
        return read_label_map(self.paths["label_map"])

    @cached_property
    def eval_label_map(self) -> LabelMap:
        evaluated = read_label_map(self.paths["eval_label_map"])
        unknown = [i for i in evaluated.ids if i not in self.label_map.names]
        if unknown:
            raise ConfigError(f"data.eval_label_map {evaluated.path} has action ids {unknown[:10]} that "
                              f"data.label_map {self.label_map.path} does not")
        return evaluated

    def _annotations(self, split: str) -> dict:
        return read_annotations(self.paths[f"{split}_annotations"], label_map=self.label_map)

    def _proposals(self, split: str, *, needed: bool) -> dict | None:
        """The split's proposals at or above the score threshold, when ``needed``."""
        if not needed:
            return None
        if self.paths[f"{split}_proposals"] is None:
            raise ConfigError(f"data.{split}_proposals is not set: the {split} boxes are to come from person "
                              f"proposals (data.train_proposal_iou / data.val_boxes=proposals)")
        return read_proposals(self.paths[f"{split}_proposals"], score_threshold=self.cfg.data.proposal_score_threshold)

    @cached_property
    def exclusions(self) -> set:
        return read_exclusions(self.paths["val_exclusions"]) if self.paths["val_exclusions"] else set()

    def _clips(self, split: str) -> ActorClips:
        d, paths, train = self.cfg.data, self.paths, split == "train"
        source = frame_source(frame_list=paths[f"{split}_frame_list"], frames_root=paths["frames"],
                              videos=paths["videos"])
        if train:
            boxes = actor_boxes(groundtruth=self._annotations("train"), train=True,
                                proposals=self._proposals("train", needed=d.train_proposal_iou is not None),
                                proposals_iou=d.train_proposal_iou)
        else:
            boxes = actor_boxes(groundtruth=self.groundtruth, train=False, excluded=self.exclusions,
                                proposals=self._proposals("val", needed=d.val_boxes == "proposals"))
        transform = (actor_train_transform(crop_size=d.image_size, short_side_range=d.short_side_range,
                                           hflip=d.hflip, mean=d.mean, std=d.std) if train else
                     actor_test_transform(short_side=d.test_short_side, mean=d.mean, std=d.std,
                                          centre_crop=d.test_centre_crop))
        return actor_clips(source=source, boxes=boxes, label_map=self.label_map,
                           named_in=paths[f"{split}_annotations"], num_frames=d.num_frames, stride=d.frame_stride,
                           fps=d.fps, first_second=d.first_second, transform=transform)

    @cached_property
    def train_set(self) -> ActorClips:
        return self._clips("train")

    @cached_property
    def val_set(self) -> ActorClips:
        return self._clips("val")

    @property
    def classes(self) -> list[str]:
        return list(self.label_map.names.values())

    @property
    def num_classes(self) -> int:
        return len(self.label_map.ids)

    def build_model(self) -> nn.Module:
        model = create_model(self.cfg.model.name, num_classes=self.num_classes, **model_kwargs(self.cfg))
        return load_initial_weights(model, self.cfg, classes=self.classes)

    def metadata(self) -> dict:
        return {"classes": self.classes, "action_ids": self.label_map.ids}

    def build_train_loader(self, dist: DistInfo):
        return train_loader(self.train_set, None, cfg=self.cfg, dist=dist, collate_fn=collate_actors)

    def build_val_loader(self, dist: DistInfo):
        return val_loader(self.val_set, None, cfg=self.cfg, dist=dist, collate_fn=collate_actors)

    def train_step(self, model: nn.Module, batch: dict, device: torch.device):
        """Binary cross-entropy over every box's actions (PySlowFast's AVA loss), and the box count."""
        if len(batch["boxes"]) == 0:
            return None, 0
        logits = model(batch["clips"].to(device, non_blocking=True), batch["boxes"].to(device, non_blocking=True))
        targets = batch["labels"].to(device, non_blocking=True)
        return F.binary_cross_entropy_with_logits(logits.float(), targets), len(targets)

    @torch.no_grad()
    def predict(self, model: nn.Module, loader, *, device: torch.device) -> list[Detection]:
        """A detection per box and evaluated action, scored by the action's probability."""
        was_training = model.training
        model.eval()
        evaluated = [(self.label_map.ids.index(action), action) for action in self.eval_label_map.ids]
        detections = []
        for batch in loader:
            if len(batch["boxes"]) == 0:
                continue
            probabilities = model(batch["clips"].to(device, non_blocking=True),
                                  batch["boxes"].to(device, non_blocking=True)).float().cpu()
            for keyframe, box, scores in zip(batch["keyframes"], batch["normalised_boxes"].tolist(), probabilities):
                detections += [Detection(keyframe=keyframe, box=tuple(box), action=action, score=float(scores[c]))
                               for c, action in evaluated]
        model.train(was_training)
        return detections

    @cached_property
    def groundtruth(self) -> dict:
        """The validation annotations: the evaluation boxes' source and the evaluator's truth."""
        return self._annotations("val")

    def evaluate(self, model: nn.Module, loader, *, device: torch.device, dist: DistInfo,
                 out_dir: Path | None = None) -> dict[str, float]:
        """Frame-level mAP at IoU 0.5 over the evaluated actions; with ``out_dir`` the detections
        (``detections.csv``, the evaluator's format) and ``per_class_ap.md``."""
        detections = self.predict(model, loader, device=device)
        if dist.enabled:
            gathered: list = [None] * dist.world_size
            torch.distributed.all_gather_object(gathered, detections)
            detections = [d for part in gathered for d in part]
        result = frame_map(groundtruth=self.groundtruth, detections=detections, class_ids=self.eval_label_map.ids,
                           exclusions=self.exclusions)
        if out_dir is not None and dist.is_main:
            out_dir = Path(out_dir)
            write_detections(out_dir / "detections.csv", detections)
            write_per_class_table(out_dir / "per_class_ap.md", result, self.eval_label_map)
        return {"mAP": result.mean_ap}
