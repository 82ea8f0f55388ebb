"""Non-overlapping windows of a token grid, for window attention (ViTDet, Li et al., 2022,
section 3 "Backbone adaptation"; hybrid window attention of MViTv2, section 5.1).

A grid whose sides are not multiples of the window is zero-padded at the bottom and right, as
detectron2 does, and the padding is cut off again when the windows are put back; padded tokens
take part in attention as zeros (detectron2 passes no mask either).
"""
from __future__ import annotations

import torch
from torch.nn import functional as F


def window_partition(x: torch.Tensor, window: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """``(B, H, W, C)`` tokens to ``(B * windows, window, window, C)``, row-major over windows,
    and the padded grid ``(Hp, Wp)``."""
    batch, height, width, channels = x.shape
    pad_h, pad_w = (-height) % window, (-width) % window
    if pad_h or pad_w:
        x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
    padded_h, padded_w = height + pad_h, width + pad_w
    x = x.view(batch, padded_h // window, window, padded_w // window, window, channels)
    return x.transpose(2, 3).reshape(-1, window, window, channels), (padded_h, padded_w)


def window_unpartition(windows: torch.Tensor, window: int, *, padded: tuple[int, int],
                       size: tuple[int, int]) -> torch.Tensor:
    """The inverse of ``window_partition``: ``(B, H, W, C)`` for the unpadded grid ``size``."""
    padded_h, padded_w = padded
    rows, cols = padded_h // window, padded_w // window
    batch = windows.shape[0] // (rows * cols)
    x = windows.view(batch, rows, cols, window, window, -1).transpose(2, 3)
    x = x.reshape(batch, padded_h, padded_w, -1)
    height, width = size
    return x[:, :height, :width] if (padded_h, padded_w) != (height, width) else x
