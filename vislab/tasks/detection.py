"""Object detection and instance segmentation: COCO-format data (or the generated shapes set),
an R-CNN from the registry, the sum of its losses, and COCO box/mask AP."""
from __future__ import annotations

from functools import cached_property, partial
from pathlib import Path

import torch
from omegaconf import DictConfig
from torch import nn

from vislab.config import model_kwargs
from vislab.data.datasets.coco import CocoDetection
from vislab.data.datasets.shapes import ensure_shapes
from vislab.data.loader import collate_detection
from vislab.data.transforms.detection import detection_eval_transform, detection_train_transform
from vislab.engine.distributed import DistInfo
from vislab.evaluation.coco import CocoEvaluator
from vislab.models import create_model
from vislab.models.detection.postprocess import to_original_size
from vislab.tasks.initial_weights import load_initial_weights
from vislab.tasks.loaders import train_loader, val_loader

DEFAULT_SHAPES_ROOT = "data/shapes"


def detection_paths(cfg: DictConfig) -> dict[str, Path]:
    """Images folder and annotation file of each split: the generated shapes set (made on first
    use) or the COCO paths of the config, relative to ``data.root`` when it is set."""
    data = cfg.data
    if data.name == "shapes":
        return ensure_shapes(Path(data.root or DEFAULT_SHAPES_ROOT), train=data.synthetic_train,
                             val=data.synthetic_val, seed=data.synthetic_seed)
    root = Path(data.root or ".")
    return {key: root / data[key] for key in ("train_images", "train_annotations", "val_images", "val_annotations")}


def eval_transform_of(cfg: DictConfig):
    d = cfg.data
    return detection_eval_transform(min_size=d.test_min_size, max_size=d.max_size, mean=d.mean, std=d.std)


def targets_to(targets: list[dict], device: torch.device) -> list[dict]:
    return [{k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in t.items()}
            for t in targets]


class DetectionTask:
    primary_metric = "bbox/AP"

    def __init__(self, cfg: DictConfig):
        self.cfg = cfg
        self.paths = detection_paths(cfg)

    @cached_property
    def with_masks(self) -> bool:
        """Whether the model predicts masks: its ``mask`` option, where its builder has one (a
        one-stage detector has none)."""
        from vislab.models.registry import builder_arguments, get_entry

        entry = get_entry(self.cfg.model.name)
        option = builder_arguments(entry).get("mask")
        if option is None:
            return False
        return bool(self.cfg.model.get("mask", entry.defaults.get("mask", option.default)))

    def _dataset(self, split: str) -> CocoDetection:
        return CocoDetection(images_dir=self.paths[f"{split}_images"], annotations=self.paths[f"{split}_annotations"],
                             train=split == "train", masks=self.with_masks and split == "train",
                             keep_empty=self.cfg.data.train_empty_images)

    @cached_property
    def train_set(self) -> CocoDetection:
        return self._dataset("train")

    @cached_property
    def val_set(self) -> CocoDetection:
        return self._dataset("val")

    @property
    def classes(self) -> list[str]:
        return list(self.val_set.classes)

    def build_model(self) -> nn.Module:
        model = create_model(self.cfg.model.name, num_classes=self.cfg.model.get("num_classes") or len(self.classes),
                             **model_kwargs(self.cfg))
        return load_initial_weights(model, self.cfg)

    def metadata(self) -> dict:
        return {"classes": self.classes}

    def _collate(self):
        return partial(collate_detection, size_divisibility=self.cfg.data.size_divisibility)

    def build_train_loader(self, dist: DistInfo):
        d = self.cfg.data
        if self.train_set.classes != self.val_set.classes:
            raise ValueError(f"the training and validation annotations have different categories: "
                             f"{self.train_set.classes} vs {self.val_set.classes}")
        transform = detection_train_transform(min_sizes=d.min_sizes, max_size=d.max_size, hflip=d.hflip,
                                              lsj_size=d.lsj_size, lsj_scale=d.lsj_scale, mean=d.mean, std=d.std)
        return train_loader(self.train_set, transform, cfg=self.cfg, dist=dist, collate_fn=self._collate(), joint=True)

    def build_val_loader(self, dist: DistInfo):
        return val_loader(self.val_set, eval_transform_of(self.cfg), cfg=self.cfg, dist=dist,
                          collate_fn=self._collate(), joint=True)

    def train_step(self, model: nn.Module, batch: dict, device: torch.device):
        """The sum of the RPN and ROI-head losses, and the batch's image count."""
        if not batch["targets"]:
            return None, 0
        losses = model(batch["images"].to(device, non_blocking=True), batch["image_sizes"],
                       targets_to(batch["targets"], device))
        return sum(losses.values()), len(batch["targets"])

    @torch.no_grad()
    def evaluate(self, model: nn.Module, loader, *, device: torch.device, dist: DistInfo,
                 out_dir: Path | None = None) -> dict[str, float]:
        """COCO AP of boxes (and masks) on the validation images at their original size; with
        ``out_dir`` the results JSON and the per-category AP table are written there."""
        was_training = model.training
        model.eval()
        evaluator = CocoEvaluator(coco_gt=self.val_set.coco, category_ids=self.val_set.category_ids,
                                  iou_types=("bbox", "segm") if self.with_masks else ("bbox",))
        for batch in loader:
            if not batch["targets"]:
                continue
            detections = model(batch["images"].to(device, non_blocking=True), batch["image_sizes"])
            originals = [tuple(t["orig_size"]) for t in batch["targets"]]
            results = to_original_size(detections, input_sizes=batch["image_sizes"], original_sizes=originals)
            for target, result in zip(batch["targets"], results):
                evaluator.update(image_id=int(target["image_id"]), boxes=result["boxes"].cpu(),
                                 scores=result["scores"].cpu(), labels=result["labels"].cpu(),
                                 masks=result["masks"].cpu() if "masks" in result else None)
        model.train(was_training)
        evaluator.merge(dist)
        return evaluator.evaluate(out_dir=out_dir if dist.is_main else None)
