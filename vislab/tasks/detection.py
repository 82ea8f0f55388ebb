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
from vislab.data.datasets.image_folder import read_rgb
from vislab.data.datasets.shapes import ensure_shapes
from vislab.data.loader import collate_detection
from vislab.data.subsets import limit
from vislab.data.transforms.detection import detection_eval_transform, detection_train_transform
from vislab.engine.distributed import DistInfo
from vislab.evaluation.coco import CocoEvaluator
from vislab.models import create_model
from vislab.models.detection.postprocess import to_original_size
from vislab.tasks.initial_weights import load_initial_weights
from vislab.tasks.loaders import train_loader, val_loader
from vislab.utils.files import atomic_path
from vislab.visualize.detection import draw_detections

DEFAULT_SHAPES_ROOT = "data/shapes"
DRAWN_SCORE = 0.5  # the lowest score drawn on the evaluation images


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
        return load_initial_weights(model, self.cfg, classes=self.classes)

    def metadata(self) -> dict:
        return {"classes": self.classes}

    def _collate(self):
        return partial(collate_detection, size_divisibility=self.cfg.data.size_divisibility)

    def _draw(self, shown: list[tuple[int, dict]], *, out_dir: Path) -> None:
        """``detections_<i>.png``: the first validation images with their detections scoring at
        least ``DRAWN_SCORE`` (shown in TensorBoard by the trainer)."""
        out_dir.mkdir(parents=True, exist_ok=True)
        for index, (image_id, result) in enumerate(shown):
            path = self.val_set.images_dir / self.val_set.coco.imgs[image_id]["file_name"]
            drawn = draw_detections(read_rgb(path), boxes=result["boxes"], labels=result["labels"],
                                    scores=result["scores"], masks=result.get("masks"), class_names=self.classes,
                                    score_threshold=DRAWN_SCORE)
            with atomic_path(out_dir / f"detections_{index}.png") as tmp:
                drawn.save(tmp, format="png")

    def build_train_loader(self, dist: DistInfo):
        d = self.cfg.data
        if self.train_set.classes != self.val_set.classes:
            raise ValueError(f"the training and validation annotations have different categories: "
                             f"{self.train_set.classes} vs {self.val_set.classes}")
        transform = detection_train_transform(min_sizes=d.min_sizes, max_size=d.max_size, hflip=d.hflip,
                                              lsj_size=d.lsj_size, lsj_scale=d.lsj_scale, mean=d.mean, std=d.std)
        images = limit(self.train_set, d.max_train_samples)  # fractions of the set for data-scaling studies
        return train_loader(images, transform, cfg=self.cfg, dist=dist, collate_fn=self._collate(), joint=True)

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
        shown: list[tuple[int, dict]] = []
        for batch in loader:
            if not batch["targets"]:
                continue
            detections = model(batch["images"].to(device, non_blocking=True), batch["image_sizes"])
            originals = [tuple(t["orig_size"]) for t in batch["targets"]]
            results = to_original_size(detections, input_sizes=batch["image_sizes"], original_sizes=originals)
            for target, result in zip(batch["targets"], results):
                result = {key: value.cpu() for key, value in result.items()}
                evaluator.update(image_id=int(target["image_id"]), boxes=result["boxes"], scores=result["scores"],
                                 labels=result["labels"], masks=result.get("masks"))
                if len(shown) < self.cfg.train.eval_images:
                    shown.append((int(target["image_id"]), result))
        model.train(was_training)
        if out_dir is not None and dist.is_main:
            self._draw(shown, out_dir=Path(out_dir))
        evaluator.merge(dist)
        return evaluator.evaluate(out_dir=out_dir if dist.is_main else None)
