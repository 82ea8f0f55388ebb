"""The two-view augmentations of MoCo v1, v2 and v3 (official ``main_moco.py`` of each repo), on
torchvision.transforms.v2; every random draw comes from torch's default generator.

- v1: the InstDisc recipe: random-resized crop, grayscale (p 0.2), colour jitter 0.4 on
  brightness, contrast, saturation and hue (always), flip.
- v2: SimCLR's: random-resized crop, colour jitter (0.4, 0.4, 0.4, 0.1) with p 0.8, grayscale
  (p 0.2), Gaussian blur (sigma in [0.1, 2], p 0.5), flip.
- v3: BYOL's, asymmetric: jitter (0.4, 0.4, 0.2, 0.1) with p 0.8 and grayscale (p 0.2) in both
  views; blur always in the first view and with p 0.1 in the second, which is also solarised
  with p 0.2.

The blur kernel spans about 10% of the crop side (an odd size), as SimCLR's.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
from PIL import Image
from torchvision.transforms import v2

from vislab.data.transforms.classification import _to_normalised_tensor

VERSIONS = ("v1", "v2", "v3")
BLUR_SIGMA = (0.1, 2.0)


def _blur(image_size: int, *, p: float) -> v2.Transform:
    kernel = max(3, int(0.1 * image_size) // 2 * 2 + 1)
    return v2.RandomApply([v2.GaussianBlur(kernel_size=kernel, sigma=BLUR_SIGMA)], p=p)


def _view(*, version: str, second: bool, image_size: int, crop_scale: Sequence[float], hflip: bool,
          mean: Sequence[float], std: Sequence[float]) -> v2.Compose:
    steps: list[v2.Transform] = [v2.RandomResizedCrop(image_size, scale=tuple(crop_scale), antialias=True)]
    if version == "v1":
        steps += [v2.RandomGrayscale(p=0.2), v2.ColorJitter(0.4, 0.4, 0.4, 0.4)]
    elif version == "v2":
        steps += [v2.RandomApply([v2.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8), v2.RandomGrayscale(p=0.2),
                  _blur(image_size, p=0.5)]
    else:
        steps += [v2.RandomApply([v2.ColorJitter(0.4, 0.4, 0.2, 0.1)], p=0.8), v2.RandomGrayscale(p=0.2),
                  _blur(image_size, p=0.1 if second else 1.0)]
        if second:
            steps.append(v2.RandomSolarize(threshold=128, p=0.2))
    if hflip:
        steps.append(v2.RandomHorizontalFlip())
    return v2.Compose(steps + _to_normalised_tensor(mean, std))


class TwoViews:
    """Two views of one image, each by its own transform (the official ``TwoCropsTransform``);
    a class rather than a closure so DataLoader workers can pickle it."""

    def __init__(self, first: Callable[[Image.Image], torch.Tensor], second: Callable[[Image.Image], torch.Tensor]):
        self.first, self.second = first, second

    def __call__(self, image: Image.Image) -> list[torch.Tensor]:
        return [self.first(image), self.second(image)]


def moco_transform(*, version: str, image_size: int, crop_scale: Sequence[float] = (0.2, 1.0),
                   mean: Sequence[float], std: Sequence[float],
                   hflip: bool = True) -> TwoViews:
    """A PIL image -> two independently augmented, normalised (3, image_size, image_size) views;
    ``hflip=False`` for data where a mirror image is another class (digits)."""
    if version not in VERSIONS:
        raise ValueError(f"unknown MoCo augmentation version {version!r}; choose one of {', '.join(VERSIONS)}")
    return TwoViews(*(_view(version=version, second=s, image_size=image_size, crop_scale=crop_scale,
                            hflip=hflip, mean=mean, std=std) for s in (False, True)))
