"""Decomposed relative position embeddings (MViTv2, Li et al., 2022, section 4.1, eqs. (2)-(3)),
shared by MViT's pooling attention and ViTDet's window and global attention (Li et al., 2022,
"Exploring Plain Vision Transformer Backbones for Object Detection", section 4.1).

A table per grid axis holds one embedding per query-key offset; the bias of a query-key pair is
the query's dot product with the embeddings of its offsets along each axis, added to the
attention logits. Tables built for one grid are resampled linearly for another.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch.nn import functional as F


def resize_rel_pos(table: torch.Tensor, length: int) -> torch.Tensor:
    """Linearly resample a ``(L, C)`` relative-position table to ``length`` rows (the official
    MViTv2/ViTDet ``get_rel_pos``; timm does the same when loading weights for another size)."""
    if table.shape[0] == length:
        return table
    resized = F.interpolate(table.transpose(0, 1).unsqueeze(0), size=length, mode="linear")
    return resized[0].transpose(0, 1)


def relative_positions(table: torch.Tensor, q_size: int, k_size: int) -> torch.Tensor:
    """The ``(q_size, k_size, C)`` embeddings of each query-key offset along one axis.

    When queries and keys have different resolutions (pooled with different strides), positions
    are compared on the finer grid: the coarser side is scaled by the size ratio (the official
    MViTv2 code). The offset is shifted to start at 0 and indexes ``table``, which is resampled
    to ``2 * max(q_size, k_size) - 1`` rows when the grid differs from the one it was built for.
    """
    table = resize_rel_pos(table, 2 * max(q_size, k_size) - 1)
    q_ratio = max(k_size / q_size, 1.0)
    k_ratio = max(q_size / k_size, 1.0)
    q_coords = torch.arange(q_size, device=table.device)[:, None] * q_ratio
    k_coords = torch.arange(k_size, device=table.device)[None, :] * k_ratio
    offsets = q_coords - k_coords + (k_size - 1) * k_ratio
    return table[offsets.long()]


def decomposed_rel_pos_bias(q: torch.Tensor, q_thw: Sequence[int], k_thw: Sequence[int],
                            tables: Sequence[torch.Tensor]) -> torch.Tensor:
    """MViTv2 section 4.1, eqs. (2)-(3): the attention bias
    ``bias[i, j] = q_i . (R_t[t(i), t(j)] + R_h[h(i), h(j)] + R_w[w(i), w(j)])``, one table per
    grid axis, as ``(B, heads, N_q, N_k)``. Each axis costs one small product of the queries
    with that axis's ``(q_size, k_size, C)`` embeddings instead of one per query-key pair.

    As in the official code, the bias uses the unscaled queries and is added after the logits
    are scaled by ``1 / sqrt(head_dim)`` (the paper's equation puts it inside the scaling).
    """
    batch, heads, _, channels = q.shape
    ndim = len(q_thw)
    q_axes = "xyz"[:ndim]
    q_grid = q.reshape(batch, heads, *q_thw, channels)
    bias = q.new_zeros(batch, heads, *q_thw, *k_thw)
    for axis, table in enumerate(tables):
        rel = relative_positions(table, q_thw[axis], k_thw[axis])
        term = torch.einsum(f"bn{q_axes}c,{q_axes[axis]}kc->bn{q_axes}k", q_grid, rel)
        key_shape = [k_thw[a] if a == axis else 1 for a in range(ndim)]
        bias = bias + term.reshape(batch, heads, *q_thw, *key_shape)
    return bias.reshape(batch, heads, math.prod(q_thw), math.prod(k_thw))
