"""Classification transforms: random-resized crop + flip for training, resize + centre crop
for evaluation (the ResNet/Inception recipe), built on torchvision.transforms.v2."""
from __future__ import annotations

from typing import Sequence

import torch
from torchvision.transforms import InterpolationMode, v2


def _to_normalised_tensor(mean: Sequence[float], std: Sequence[float]) -> list:
    return [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean=list(mean), std=list(std))]


def train_transform(*, image_size: int, crop_scale: Sequence[float], hflip: bool,
                    mean: Sequence[float], std: Sequence[float]) -> v2.Compose:
    steps = [v2.RandomResizedCrop(image_size, scale=tuple(crop_scale),
                                  interpolation=InterpolationMode.BILINEAR, antialias=True)]
    if hflip:
        steps.append(v2.RandomHorizontalFlip())
    return v2.Compose(steps + _to_normalised_tensor(mean, std))


def val_transform(*, image_size: int, resize: int | None, mean: Sequence[float],
                  std: Sequence[float]) -> v2.Compose:
    """Resize the shorter side to ``resize`` (``image_size / 0.875`` if None), centre-crop."""
    resize = resize if resize is not None else int(round(image_size / 0.875))
    return v2.Compose([v2.Resize(resize, interpolation=InterpolationMode.BILINEAR, antialias=True),
                       v2.CenterCrop(image_size)] + _to_normalised_tensor(mean, std))
