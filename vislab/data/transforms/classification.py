"""Classification transforms on torchvision.transforms.v2.

Training: random-resized crop (Szegedy et al., 2015) or, for BiT, a square resize and a random
crop; optional flip, RandAugment (Cubuk et al., 2020) and random erasing (Zhong et al., 2020),
as in the DeiT / ConvNeXt recipes. Evaluation: resize the shorter side and centre-crop.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torchvision.transforms import InterpolationMode, v2


def _to_normalised_tensor(mean: Sequence[float], std: Sequence[float]) -> list:
    return [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean=list(mean), std=list(std))]


def train_transform(*, image_size: int, crop_scale: Sequence[float], hflip: bool,
                    mean: Sequence[float], std: Sequence[float], train_resize: int | None = None,
                    randaugment_magnitude: int | None = None, randaugment_ops: int = 2,
                    random_erasing: float = 0.0) -> v2.Compose:
    if train_resize is None:
        steps = [v2.RandomResizedCrop(image_size, scale=tuple(crop_scale),
                                      interpolation=InterpolationMode.BICUBIC if randaugment_magnitude
                                      else InterpolationMode.BILINEAR, antialias=True)]
    else:
        steps = [v2.Resize((train_resize, train_resize), antialias=True), v2.RandomCrop(image_size)]
    if hflip:
        steps.append(v2.RandomHorizontalFlip())
    if randaugment_magnitude is not None:
        steps.append(v2.RandAugment(num_ops=randaugment_ops, magnitude=randaugment_magnitude,
                                    interpolation=InterpolationMode.BILINEAR))
    steps += _to_normalised_tensor(mean, std)
    if random_erasing > 0:
        steps.append(v2.RandomErasing(p=random_erasing, value=0))
    return v2.Compose(steps)


def val_transform(*, image_size: int, resize: int | None, mean: Sequence[float],
                  std: Sequence[float]) -> v2.Compose:
    """Resize the shorter side to ``resize`` (``image_size / 0.875`` if None), centre-crop."""
    resize = resize if resize is not None else int(round(image_size / 0.875))
    return v2.Compose([v2.Resize(resize, interpolation=InterpolationMode.BILINEAR, antialias=True),
                       v2.CenterCrop(image_size)] + _to_normalised_tensor(mean, std))
