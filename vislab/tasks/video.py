"""Video classification: Kinetics-style list files (or the generated moving-shapes set), a video
model from the registry, cross-entropy on one random clip per video, and multi-view testing."""
from __future__ import annotations

from functools import cached_property
from pathlib import Path

import torch
from omegaconf import DictConfig
from torch import nn
from torch.nn import functional as F

from vislab.config import model_kwargs
from vislab.data.datasets.moving_shapes import ensure_moving_shapes
from vislab.data.datasets.video_list import VideoListDataset
from vislab.data.transforms.video import video_test_views, video_train_transform
from vislab.engine.distributed import DistInfo, all_reduce_sum
from vislab.evaluation.video import MultiViewAccumulator, save_confusion_matrix
from vislab.models import create_model
from vislab.tasks.initial_weights import load_initial_weights
from vislab.tasks.loaders import train_loader, val_loader

DEFAULT_MOVING_SHAPES_ROOT = "data/moving_shapes"


def video_paths(cfg: DictConfig) -> dict[str, Path]:
    """The folder list paths are relative to and the two list files."""
    data = cfg.data
    if data.name == "moving_shapes":
        return ensure_moving_shapes(Path(data.root or DEFAULT_MOVING_SHAPES_ROOT), train=data.synthetic_train,
                                    val=data.synthetic_val, seed=data.synthetic_seed)
    root = Path(data.root or ".")
    return {"root": root, "train_list": root / data.train_list, "val_list": root / data.val_list}


def eval_views_of(cfg: DictConfig):
    d = cfg.data
    return video_test_views(crop_size=d.image_size, short_side=d.test_short_side, num_crops=d.test_crops,
                            mean=d.mean, std=d.std)


def video_dataset(cfg: DictConfig, split: str) -> VideoListDataset:
    d, paths = cfg.data, video_paths(cfg)
    train = split == "train"
    transform = (video_train_transform(crop_size=d.image_size, short_side_range=d.short_side_range, hflip=d.hflip,
                                       mean=d.mean, std=d.std) if train else eval_views_of(cfg))
    return VideoListDataset(list_file=paths[f"{split}_list"], root=paths["root"], train=train,
                            num_frames=d.num_frames, stride=d.frame_stride, transform=transform,
                            num_clips=1 if train else d.test_clips, skip_bad=d.skip_bad,
                            num_classes=cfg.model.get("num_classes"))


class VideoTask:
    primary_metric = "top1"

    def __init__(self, cfg: DictConfig):
        self.cfg = cfg

    @cached_property
    def train_set(self) -> VideoListDataset:
        return video_dataset(self.cfg, "train")

    @cached_property
    def val_set(self) -> VideoListDataset:
        return video_dataset(self.cfg, "val")

    @property
    def classes(self) -> list[str]:
        return list(self.val_set.classes)

    @property
    def num_classes(self) -> int:
        return self.cfg.model.get("num_classes") or max(len(self.train_set.classes), len(self.classes))

    def build_model(self) -> nn.Module:
        model = create_model(self.cfg.model.name, num_classes=self.num_classes, **model_kwargs(self.cfg))
        return load_initial_weights(model, self.cfg, classes=self.classes)

    def metadata(self) -> dict:
        return {"classes": self.classes}

    def build_train_loader(self, dist: DistInfo):
        return train_loader(self.train_set, None, cfg=self.cfg, dist=dist)

    def build_val_loader(self, dist: DistInfo):
        return val_loader(self.val_set, None, cfg=self.cfg, dist=dist)

    def train_step(self, model: nn.Module, batch: dict, device: torch.device):
        """Mean cross-entropy (with label smoothing) of one clip per video, and the clip count."""
        labels = batch["labels"].to(device, non_blocking=True)
        if labels.numel() == 0:
            return None, 0
        logits = model(batch["images"].to(device, non_blocking=True))
        return F.cross_entropy(logits.float(), labels, label_smoothing=self.cfg.train.label_smoothing), labels.numel()

    @torch.no_grad()
    def evaluate(self, model: nn.Module, loader, *, device: torch.device, dist: DistInfo,
                 out_dir: Path | None = None) -> dict[str, float]:
        """Video-level top-1/top-5 (softmax averaged over all views) and clip-level top-1;
        with ``out_dir`` the video-level confusion matrix as ``confusion_matrix.png``."""
        was_training = model.training
        model.eval()
        accumulator = MultiViewAccumulator(num_classes=self.num_classes)
        for batch in loader:
            labels = batch["labels"]
            if labels.numel() == 0:
                continue
            views = batch["images"]  # [B, V, 3, T, H, W]
            logits = model(views.flatten(0, 1).to(device, non_blocking=True))
            accumulator.update(logits.view(*views.shape[:2], -1).cpu(), labels)
        model.train(was_training)
        metrics, confusion = accumulator.result(all_reduce_sum(accumulator.state(), dist))
        if out_dir is not None and dist.is_main:
            names = [*self.classes, *map(str, range(len(self.classes), self.num_classes))]
            save_confusion_matrix(confusion, class_names=names, path=Path(out_dir) / "confusion_matrix.png")
        return metrics
