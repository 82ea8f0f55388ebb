"""Multi-head self-attention over a token sequence (Vaswani et al., 2017, section 3.2.2).

One ``qkv`` projection produces queries, keys and values for every head, the heads attend through
``F.scaled_dot_product_attention`` (which scales by ``1 / sqrt(head_dim)`` and which vislab's FLOP
counter sees), and ``proj`` mixes the heads' outputs. The parameter layout (``qkv``, ``proj``)
is the one of timm, DeiT and MAE, so their weights load by renaming the module prefix only.

With ``rel_pos_grid`` the attention adds ViTDet's decomposed relative positions (Li et al., 2022,
section 4.1, after MViTv2) through ``rel_pos_attention``: the additive mask of
``scaled_dot_product_attention`` at inference, extended queries and keys in training; the tables
``rel_pos_h`` / ``rel_pos_w`` start at zero and are detectron2's layout.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from vislab.layers.rel_pos import rel_pos_attention
from vislab.layers.sdpa import attend


class MultiHeadSelfAttention(nn.Module):
    """Self-attention of ``(N, L, dim)`` tokens with ``num_heads`` heads of ``dim // num_heads``.

    ``qkv_bias`` adds a learned bias to queries, keys and values (on in ViT, DeiT and MAE).
    ``rel_pos_grid`` ``(h, w)``: the token grid the relative-position tables are sized for
    (``2 h - 1`` and ``2 w - 1`` rows); other grids resample them linearly.
    """

    def __init__(self, dim: int, *, num_heads: int, qkv_bias: bool = True,
                 rel_pos_grid: Sequence[int] | None = None):
        super().__init__()
        if dim % num_heads != 0:
            raise ValueError(f"attention width {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.rel_pos = rel_pos_grid is not None
        if self.rel_pos:
            height, width = rel_pos_grid
            self.rel_pos_h = nn.Parameter(torch.zeros(2 * height - 1, self.head_dim))
            self.rel_pos_w = nn.Parameter(torch.zeros(2 * width - 1, self.head_dim))

    def forward(self, x: torch.Tensor, grid: tuple[int, int] | None = None) -> torch.Tensor:
        """``x`` is ``(N, L, dim)``; with relative positions ``grid`` is the ``(h, w)`` layout of
        the ``L = h * w`` tokens (row-major)."""
        batch, length, dim = x.shape
        qkv = self.qkv(x).reshape(batch, length, 3, self.num_heads, self.head_dim)
        query, key, value = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (N, heads, L, head_dim)
        if self.rel_pos:
            if grid is None or grid[0] * grid[1] != length:
                raise ValueError(f"relative positions need the token grid of the {length} tokens, got {grid}")
            attended = rel_pos_attention(query, key, value, q_thw=grid, k_thw=grid,
                                         tables=(self.rel_pos_h, self.rel_pos_w))
        else:
            attended = attend(query, key, value)
        return self.proj(attended.transpose(1, 2).reshape(batch, length, dim))
