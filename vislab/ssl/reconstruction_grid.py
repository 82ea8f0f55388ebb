"""A PNG of MAE reconstructions: one column per image, rows original / masked / reconstruction
(as MAE's Figures 2-4)."""
from __future__ import annotations

import os
from typing import Sequence

import torch
from torchvision.utils import make_grid, save_image

from vislab.utils.files import atomic_path


def save_reconstruction_grid(path: str | os.PathLike, *, originals: torch.Tensor, masked: torch.Tensor,
                             reconstructions: torch.Tensor, mean: Sequence[float], std: Sequence[float],
                             max_images: int = 8) -> None:
    """Write the first ``max_images`` of each ``(N, C, H, W)`` batch, given in the normalised
    pixel space of ``mean`` and ``std`` (per channel), un-normalised and clipped to [0, 1]."""
    if max_images < 1:
        raise ValueError(f"max_images must be at least 1, got {max_images}")
    rows = {"originals": originals, "masked": masked, "reconstructions": reconstructions}
    shapes = {name: tuple(images.shape) for name, images in rows.items()}
    if len(set(shapes.values())) != 1 or originals.ndim != 4:
        raise ValueError(f"originals, masked and reconstructions must be (N, C, H, W) batches of one shape; "
                         f"got {shapes}")
    channels = originals.shape[1]
    if len(mean) != channels or len(std) != channels:
        raise ValueError(f"mean {list(mean)} and std {list(std)} must have one value per channel ({channels})")
    scale = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    shift = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    count = min(max_images, originals.shape[0])
    pixels = [(images[:count].detach().float().cpu() * scale + shift).clamp(0, 1) for images in rows.values()]
    grid = make_grid(torch.cat(pixels), nrow=count, padding=2, pad_value=1.0)
    with atomic_path(path) as tmp:
        save_image(grid, tmp, format="png")
