"""Self-supervised pre-training (MAE; MoCo v1, v2, v3) on the images of a classification
dataset, whose labels are read only by the k-NN monitor.

The model's ``views_per_image`` chooses the input: one random-resized crop (MAE) or two
augmented views in the paper's recipe (MoCo, ``model.augmentation``). Evaluation reports the
pre-training loss on the validation images and the k-NN top-1 of the encoder's pooled features;
for MAE it also writes original / masked / reconstruction grids into the run directory.
"""
from __future__ import annotations

from functools import cached_property
from pathlib import Path

import torch
from omegaconf import DictConfig
from torch import nn
from torch.nn import functional as F
from torch.utils.data import Dataset

from vislab.config import model_kwargs
from vislab.data.loader import build_loader, collate_classification
from vislab.data.sampler import SeededSamples
from vislab.data.transforms.classification import train_transform
from vislab.engine.distributed import DistInfo, all_reduce_sum
from vislab.evaluation.knn import knn_predict
from vislab.models import create_model
from vislab.ssl.augment import moco_transform
from vislab.ssl.reconstruction_grid import save_reconstruction_grid
from vislab.data.subsets import limit
from vislab.tasks.classification import build_dataset, eval_transform_from
from vislab.tasks.initial_weights import load_initial_weights
from vislab.tasks.loaders import train_loader, val_loader

GRID_SEED = 0  # the same masks at every evaluation, so grids show progress, not new masks


def collate_views(samples: list) -> dict:
    """Stack each view of ``(views, label)`` samples: ``views`` is a list of [B, 3, H, W]."""
    views, labels = zip(*samples)
    return {"views": [torch.stack(v) for v in zip(*views)], "labels": torch.tensor(labels)}


class PretrainTask:
    primary_metric = "knn_top1"

    def __init__(self, cfg: DictConfig):
        self.cfg = cfg
        self.model: nn.Module | None = None

    @cached_property
    def train_set(self) -> Dataset:
        return limit(build_dataset(self.cfg, "train"), self.cfg.data.max_train_samples)

    @cached_property
    def val_set(self) -> Dataset:
        return limit(build_dataset(self.cfg, "val"), self.cfg.data.max_val_samples)

    @cached_property
    def knn_bank_set(self) -> Dataset:
        return limit(build_dataset(self.cfg, "train"), self.cfg.data.knn_bank)

    def build_model(self) -> nn.Module:
        self.model = create_model(self.cfg.model.name, **model_kwargs(self.cfg))
        return load_initial_weights(self.model, self.cfg)

    def metadata(self) -> dict:
        return {"classes": list(self.val_set.classes)}

    def _model(self) -> nn.Module:
        if self.model is None:
            raise RuntimeError("PretrainTask.build_model must run before the data loaders are built")
        return self.model

    def _train_transform(self):
        d, model = self.cfg.data, self._model()
        if model.views_per_image == 1:
            return train_transform(image_size=d.image_size, crop_scale=d.crop_scale, hflip=d.hflip,
                                   mean=d.mean, std=d.std)
        return moco_transform(version=model.augmentation, image_size=d.image_size, crop_scale=d.crop_scale,
                              mean=d.mean, std=d.std, hflip=d.hflip)

    def build_train_loader(self, dist: DistInfo):
        train = self.cfg.train
        model = self._model()
        collate = collate_classification if model.views_per_image == 1 else collate_views
        loader, sampler = train_loader(self.train_set, self._train_transform(), cfg=self.cfg, dist=dist,
                                       collate_fn=collate)
        if hasattr(model, "set_total_steps"):  # MoCo v3's momentum schedule runs over every forward pass
            steps = train.steps if train.steps is not None else (
                sampler.batches_per_epoch // train.accumulate_steps * train.epochs)
            model.set_total_steps(steps * train.accumulate_steps)
        return loader, sampler

    def build_val_loader(self, dist: DistInfo):
        return val_loader(self.val_set, eval_transform_from(self.cfg), cfg=self.cfg, dist=dist)

    def train_step(self, model: nn.Module, batch: dict, device: torch.device):
        """The method's loss on one batch, and its image count."""
        if "views" in batch:
            outputs = model([v.to(device, non_blocking=True) for v in batch["views"]])
        else:
            outputs = model(batch["images"].to(device, non_blocking=True))
        return outputs["loss"], batch["labels"].numel()

    @torch.no_grad()
    def _features(self, backbone: nn.Module, dataset: Dataset, *, device: torch.device,
                  dist: DistInfo) -> tuple[torch.Tensor, torch.Tensor]:
        loader = build_loader(SeededSamples(dataset, eval_transform_from(self.cfg)), range(len(dataset)),
                              batch_size=self.cfg.data.batch_size, num_workers=self.cfg.data.num_workers,
                              collate_fn=collate_classification)
        features, labels = [], []
        for batch in loader:
            features.append(F.normalize(backbone.forward_pooled(batch["images"].to(device)).float(), dim=1))
            labels.append(batch["labels"].to(device))
        return torch.cat(features), torch.cat(labels)

    @torch.no_grad()
    def evaluate(self, model: nn.Module, loader, *, device: torch.device, dist: DistInfo,
                 out_dir: Path | None = None) -> dict[str, float]:
        """``loss`` (the method's, on centre crops shown as every view) and ``knn_top1`` (a fraction,
        like the classification accuracies)."""
        was_training = model.training
        model.eval()
        bank, bank_labels = self._features(model.backbone, self.knn_bank_set, device=device, dist=dist)
        totals = torch.zeros(3, dtype=torch.float64, device=device)  # loss sum, correct, images
        first_images = None
        for batch in loader:
            images, labels = batch["images"].to(device), batch["labels"].to(device)
            if images.numel() == 0:
                continue
            inputs = images if model.views_per_image == 1 else [images] * model.views_per_image
            loss = model(inputs)["loss"].float()
            queries = F.normalize(model.backbone.forward_pooled(images).float(), dim=1)
            predicted = knn_predict(bank=bank, bank_labels=bank_labels, queries=queries,
                                    num_classes=len(self.val_set.classes))
            totals += torch.stack((loss * len(labels), (predicted == labels).sum(), torch.tensor(len(labels))))
            if first_images is None:
                first_images = images
        if (out_dir is not None and dist.is_main and first_images is not None and hasattr(model, "reconstruct")
                and self.cfg.train.eval_images > 0):
            self._save_grid(model, first_images, out_dir)
        model.train(was_training)
        loss_sum, correct, count = all_reduce_sum(totals.cpu(), dist).tolist()
        return {"loss": loss_sum / max(count, 1), "knn_top1": correct / max(count, 1)}

    def _save_grid(self, model: nn.Module, images: torch.Tensor, out_dir: Path) -> None:
        generator = torch.Generator(device=images.device).manual_seed(GRID_SEED)
        views = model.reconstruct(images, generator=generator)
        save_reconstruction_grid(Path(out_dir) / "reconstruction.png", originals=images, masked=views["masked"],
                                 reconstructions=views["reconstruction"], mean=self.cfg.data.mean,
                                 std=self.cfg.data.std, max_images=self.cfg.train.eval_images)
