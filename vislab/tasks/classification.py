"""Image classification: datasets, model, cross-entropy and top-k evaluation from a config."""
from __future__ import annotations

from functools import cached_property
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.nn import functional as F
from torch.utils.data import Dataset

from vislab.config import model_kwargs
from vislab.data.subsets import fixed_order, limit, subset_of
from vislab.data.datasets.coco_images import CocoImages, CocoObjects
from vislab.data.datasets.digits import DigitsDataset
from vislab.data.datasets.image_folder import DataError, ImageFolderDataset
from vislab.data.transforms.classification import train_transform, val_transform
from vislab.data.transforms.mixing import BatchMixing
from vislab.engine.distributed import DistInfo, all_reduce_sum
from vislab.evaluation.classification import TopKAccumulator
from vislab.models import create_model
from vislab.tasks.bit_hyperrule import hyperrule, rule_items
from vislab.tasks.detection import detection_paths
from vislab.tasks.initial_weights import load_initial_weights
from vislab.tasks.loaders import train_loader, val_loader


def build_dataset(cfg: DictConfig, split: str) -> Dataset:
    """The ``split`` images of ``data.name``: digits, an image folder, or a COCO-format detection
    set (``coco``, or the generated ``shapes``) for pre-training on it: its images, or with
    ``data.coco_examples=objects`` its objects' crops."""
    data = cfg.data
    if data.name == "digits":
        return DigitsDataset(split)
    if data.name in ("coco", "shapes"):
        paths = detection_paths(cfg)
        files = {"images_dir": paths[f"{split}_images"], "annotations": paths[f"{split}_annotations"]}
        if data.coco_examples == "objects":
            return CocoObjects(**files, context=data.object_context)
        return CocoImages(**files)
    folder = data.train_split if split == "train" else data.val_split
    return ImageFolderDataset(Path(data.root) / folder, skip_bad=data.skip_bad, require_every_class=split == "train")


def classifier_from_config(cfg: DictConfig, *, num_classes: int) -> nn.Module:
    """The model ``cfg.model`` describes, with ``num_classes`` outputs unless it names its own
    (a linear probe's head with ``linear_probe``)."""
    model = create_model(cfg.model.name, num_classes=cfg.model.get("num_classes") or num_classes,
                         **model_kwargs(cfg))
    return model.make_linear_probe() if cfg.linear_probe else model


def eval_transform_from(cfg: DictConfig):
    d = cfg.data
    return val_transform(image_size=d.image_size, resize=d.val_resize, mean=d.mean, std=d.std)


def few_shot(dataset: Dataset, examples_per_class: int | None) -> Dataset:
    """The first ``examples_per_class`` images of each class in one fixed permutation."""
    if examples_per_class is None:
        return dataset
    chosen: dict[int, list[int]] = {}
    for index in fixed_order(len(dataset)):
        picks = chosen.setdefault(dataset.labels[index], [])
        if len(picks) < examples_per_class:
            picks.append(index)
    short = {dataset.classes[c]: len(p) for c, p in chosen.items() if len(p) < examples_per_class}
    if short:
        raise ValueError(f"data.examples_per_class={examples_per_class}, but some classes have "
                         f"fewer training images: {short}")
    return subset_of(dataset, [i for picks in chosen.values() for i in picks])


def typical_image_area(dataset: Dataset, *, probes: int = 8) -> int:
    """The median pixel count of a few training images (BiT-HyperRule's resolution rule)."""
    step = max(1, len(dataset) // probes)
    sizes = [dataset[i][0].size for i in range(0, len(dataset), step)[:probes]]
    areas = sorted(w * h for w, h in sizes)
    return areas[len(areas) // 2]


class ClassificationTask:
    primary_metric = "top1"

    def __init__(self, cfg: DictConfig):
        self.cfg = cfg
        if cfg.bit_hyperrule:  # the rule fills what the recipe and command line leave unset
            rule = hyperrule(num_examples=len(self.train_set), image_area=typical_image_area(self.train_set))
            unset = {key: value for key, value in rule_items(rule) if key not in cfg.explicit_keys}
            self.cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist([f"{k}={v}" for k, v in unset.items()]))
        d = self.cfg.data
        self.mixing = (BatchMixing(num_classes=self.num_classes, mixup_alpha=d.mixup_alpha,
                                   cutmix_alpha=d.cutmix_alpha)
                       if d.mixup_alpha > 0 or d.cutmix_alpha > 0 else None)

    @cached_property
    def train_set(self) -> Dataset:
        data = self.cfg.data
        return few_shot(limit(build_dataset(self.cfg, "train"), data.max_train_samples), data.examples_per_class)

    @cached_property
    def val_set(self) -> Dataset:
        return limit(build_dataset(self.cfg, "val"), self.cfg.data.max_val_samples)

    @property
    def classes(self) -> list[str]:
        return list(self.val_set.classes)

    @property
    def num_classes(self) -> int:
        return self.cfg.model.get("num_classes") or len(self.classes)

    def build_model(self) -> nn.Module:
        model = classifier_from_config(self.cfg, num_classes=self.num_classes)
        return load_initial_weights(model, self.cfg, classes=self.classes)

    def metadata(self) -> dict:
        return {"classes": self.classes}

    def build_train_loader(self, dist: DistInfo):
        d = self.cfg.data
        if list(self.train_set.classes) != self.classes:
            raise DataError(f"the {d.train_split} and {d.val_split} splits of {d.root} have different "
                            f"class folders: {sorted(set(self.train_set.classes) ^ set(self.classes))} "
                            f"appear in only one of them")
        transform = train_transform(image_size=d.image_size, crop_scale=d.crop_scale, hflip=d.hflip,
                                    mean=d.mean, std=d.std, train_resize=d.train_resize,
                                    randaugment_magnitude=d.randaugment_magnitude,
                                    randaugment_ops=d.randaugment_ops, random_erasing=d.random_erasing)
        return train_loader(self.train_set, transform, cfg=self.cfg, dist=dist)

    def build_val_loader(self, dist: DistInfo):
        return val_loader(self.val_set, eval_transform_from(self.cfg), cfg=self.cfg, dist=dist)

    def train_step(self, model: nn.Module, batch: dict, device: torch.device):
        """Mean cross-entropy (label smoothing; soft targets under mixup/CutMix) of the batch,
        and its image count."""
        labels = batch["labels"].to(device, non_blocking=True)
        if labels.numel() == 0:
            return None, 0
        images = self._to_device(batch["images"], device)
        targets = labels
        if self.mixing is not None:
            images, targets = self.mixing(images, labels)
        logits = model(images)
        loss = F.cross_entropy(logits.float(), targets, label_smoothing=self.cfg.train.label_smoothing)
        return loss, labels.numel()

    def _to_device(self, images: torch.Tensor, device: torch.device) -> torch.Tensor:
        images = images.to(device, non_blocking=True)
        if self.cfg.train.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return images

    @torch.no_grad()
    def evaluate(self, model: nn.Module, loader, *, device: torch.device, dist: DistInfo,
                 out_dir: Path | None = None) -> dict[str, float]:
        """Top-1 and top-5 accuracy (%); ``out_dir`` is not used (the metrics are logged)."""
        was_training = model.training
        model.eval()
        acc = TopKAccumulator(num_classes=self.num_classes)
        for batch in loader:
            if batch["labels"].numel():
                acc.update(model(self._to_device(batch["images"], device)), batch["labels"].to(device))
        model.train(was_training)
        return TopKAccumulator.result(acc.names, all_reduce_sum(acc.state(), dist))
