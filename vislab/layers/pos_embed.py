"""Absolute position embeddings on a grid of patch tokens.

``sincos_2d_position_embedding`` is the fixed embedding of MAE (He et al., 2022, section 3,
"Encoder": "sine-cosine version"; facebookresearch/mae ``util/pos_embed.py``, after MoCo v3).
``resize_grid_position_embedding`` resamples an embedding built for one token grid to another,
as DeiT and MAE do when fine-tuning at a new resolution and as timm's ``resample_abs_pos_embed``
does at run time.
"""
from __future__ import annotations

import torch
from torch.nn import functional as F


def _sincos_1d(positions: torch.Tensor, dim: int) -> torch.Tensor:
    """``[sin(p * omega), cos(p * omega)]`` with ``omega_i = 1 / 10000^(2i / dim)`` for
    ``i < dim / 2``: the Transformer's encoding (Vaswani et al., 2017, section 3.5) with all sines
    first, then all cosines. Returns ``(len(positions), dim)``."""
    exponents = torch.arange(dim // 2, dtype=torch.float64, device=positions.device) * 2 / dim
    omega = 1.0 / 10000**exponents
    angles = positions.to(torch.float64)[:, None] * omega[None, :]
    return torch.cat([angles.sin(), angles.cos()], dim=1)


def sincos_2d_position_embedding(*, embed_dim: int, grid_size: tuple[int, int],
                                 device: torch.device | str | None = None) -> torch.Tensor:
    """The fixed 2-D sine-cosine embedding of an ``(h, w)`` grid, ``(h * w, embed_dim)`` float32,
    tokens in row-major order (token ``r * w + c`` is row ``r``, column ``c``).

    The first ``embed_dim / 2`` channels encode the column (w) coordinate and the second half the
    row (h) coordinate. MAE's code builds ``meshgrid(grid_w, grid_h)`` and feeds the first grid,
    the column index, to the first half, although its comment names it ``grid_h``; this order
    is what MAE's weights were trained with, so it is kept.
    """
    if embed_dim % 4 != 0:
        raise ValueError(f"a 2-D sine-cosine embedding needs embed_dim divisible by 4, got {embed_dim}")
    height, width = grid_size
    rows = torch.arange(height, device=device).repeat_interleave(width)
    cols = torch.arange(width, device=device).repeat(height)
    half = embed_dim // 2
    return torch.cat([_sincos_1d(cols, half), _sincos_1d(rows, half)], dim=1).float()


def resize_grid_position_embedding(pos_embed: torch.Tensor, *, old_grid: tuple[int, int],
                                   new_grid: tuple[int, int], num_prefix_tokens: int,
                                   antialias: bool = True) -> torch.Tensor:
    """Resample ``pos_embed`` ``(1, num_prefix_tokens + h * w, C)`` from grid ``old_grid`` to
    ``new_grid`` by bicubic interpolation (``align_corners=False``); prefix (class token) entries
    are kept as they are. ``antialias`` is timm's ``resample_abs_pos_embed`` (PyTorch's
    anti-aliased bicubic, which also uses another cubic coefficient); without it, detectron2's
    ``get_abs_pos``. The same grid returns ``pos_embed`` itself."""
    if tuple(old_grid) == tuple(new_grid):
        return pos_embed
    prefix, grid = pos_embed[:, :num_prefix_tokens], pos_embed[:, num_prefix_tokens:]
    channels = grid.shape[-1]
    grid = grid.float().reshape(1, old_grid[0], old_grid[1], channels).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=tuple(new_grid), mode="bicubic", align_corners=False, antialias=antialias)
    grid = grid.permute(0, 2, 3, 1).reshape(1, new_grid[0] * new_grid[1], channels).to(pos_embed.dtype)
    return torch.cat([prefix, grid], dim=1)
