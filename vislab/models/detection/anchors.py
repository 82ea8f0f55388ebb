"""Anchor boxes for each level of a feature pyramid (Faster R-CNN section 3.1.1; FPN section 4.1:
one anchor size per level, 32 to 512 pixels on P2 to P6, three aspect ratios)."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn


def cell_anchors(*, size: float, aspect_ratios: Sequence[float], round_corners: bool) -> torch.Tensor:
    """[A, 4] boxes of area ``size**2`` centred on the origin, one per ``aspect_ratio`` (h / w).

    ``round_corners`` rounds the corners to whole pixels, as torchvision does; detectron2 keeps
    them exact."""
    ratios = torch.as_tensor(aspect_ratios, dtype=torch.float32)
    heights = size * torch.sqrt(ratios)
    widths = size / torch.sqrt(ratios)
    anchors = torch.stack((-widths, -heights, widths, heights), dim=1) / 2
    return anchors.round() if round_corners else anchors


class AnchorGenerator(nn.Module):
    """Anchors of every position of every level, laid out position-major (for each position,
    its A anchors), which is the order the RPN head's outputs are flattened in."""

    def __init__(self, *, sizes: Sequence[float], strides: Sequence[int],
                 aspect_ratios: Sequence[float] = (0.5, 1.0, 2.0), round_corners: bool = False):
        super().__init__()
        if len(sizes) != len(strides):
            raise ValueError(f"one anchor size per level: got {len(sizes)} sizes for {len(strides)} levels")
        self.strides = tuple(strides)
        self.num_anchors = len(aspect_ratios)
        for level, size in enumerate(sizes):
            self.register_buffer(f"cell{level}", cell_anchors(size=size, aspect_ratios=aspect_ratios,
                                                              round_corners=round_corners), persistent=False)

    def forward(self, grid_sizes: Sequence[tuple[int, int]]) -> list[torch.Tensor]:
        """One [H*W*A, 4] tensor per level for feature maps of ``grid_sizes``."""
        anchors = []
        for level, ((height, width), stride) in enumerate(zip(grid_sizes, self.strides)):
            cell = getattr(self, f"cell{level}")
            xs = torch.arange(width, device=cell.device, dtype=torch.float32) * stride
            ys = torch.arange(height, device=cell.device, dtype=torch.float32) * stride
            shift_y, shift_x = torch.meshgrid(ys, xs, indexing="ij")
            shifts = torch.stack((shift_x, shift_y, shift_x, shift_y), dim=-1).reshape(-1, 1, 4)
            anchors.append((shifts + cell.view(1, -1, 4)).reshape(-1, 4))
        return anchors
