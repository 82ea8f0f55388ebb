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

from vislab.layers.sdpa import attend


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


def _axis_terms(q: torch.Tensor, q_thw: Sequence[int], k_thw: Sequence[int],
                tables: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Per grid axis, ``q_i . R[axis(i), k]`` for every key coordinate ``k`` along that axis:
    ``(B, heads, N_q, k_thw[axis])`` (queries on the grid ``q_thw``, no prefix tokens)."""
    batch, heads, _, channels = q.shape
    q_axes = "xyz"[:len(q_thw)]
    q_grid = q.reshape(batch, heads, *q_thw, channels)
    terms = []
    for axis, table in enumerate(tables):
        rel = relative_positions(table, q_thw[axis], k_thw[axis]).to(q.dtype)
        term = torch.einsum(f"bn{q_axes}c,{q_axes[axis]}kc->bn{q_axes}k", q_grid, rel)
        terms.append(term.reshape(batch, heads, -1, k_thw[axis]))
    return terms


def decomposed_rel_pos_bias(q: torch.Tensor, q_thw: Sequence[int], k_thw: Sequence[int],
                            tables: Sequence[torch.Tensor]) -> torch.Tensor:
    """MViTv2 section 4.1, eqs. (2)-(3): the attention bias
    ``bias[i, j] = q_i . (R_t[t(i), t(j)] + R_h[h(i), h(j)] + R_w[w(i), w(j)])``, one table per
    grid axis, as ``(B, heads, N_q, N_k)``. Each axis costs one small product of the queries
    with that axis's ``(q_size, k_size, C)`` embeddings instead of one per query-key pair.

    As in the official code, the bias uses the unscaled queries and is added after the logits
    are scaled by ``1 / sqrt(head_dim)`` (the paper's equation puts it inside the scaling).
    """
    return _bias(_axis_terms(q, q_thw, k_thw, tables), q_thw=q_thw, k_thw=k_thw)


def _bias(terms: list[torch.Tensor], *, q_thw: Sequence[int], k_thw: Sequence[int]) -> torch.Tensor:
    """The per-axis terms broadcast over the key grid and summed: ``(B, heads, N_q, N_k)``."""
    batch, heads = terms[0].shape[:2]
    ndim = len(q_thw)
    bias = None
    for axis, term in enumerate(terms):
        key_shape = [k_thw[a] if a == axis else 1 for a in range(ndim)]
        term = term.reshape(batch, heads, *q_thw, *key_shape)
        bias = term if bias is None else bias + term
    return bias.expand(batch, heads, *q_thw, *k_thw).reshape(batch, heads, math.prod(q_thw), math.prod(k_thw))


def _key_coordinates(k_thw: Sequence[int], *, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """``(N_k, sum(k_thw))``: each grid key's coordinate along every axis, one-hot per axis."""
    grids = torch.meshgrid(*(torch.arange(size, device=device) for size in k_thw), indexing="ij")
    return torch.cat([F.one_hot(g.reshape(-1), size) for g, size in zip(grids, k_thw)], dim=1).to(dtype)


def rel_pos_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, q_thw: Sequence[int],
                      k_thw: Sequence[int], tables: Sequence[torch.Tensor], num_prefix_tokens: int = 0) -> torch.Tensor:
    """Scaled dot-product attention of ``(B, heads, N, C)`` queries, keys and values with
    decomposed relative positions (``decomposed_rel_pos_bias``); ``num_prefix_tokens`` leading
    tokens (a class token) outside the grid take no position term.

    Without gradients (inference, FLOP counting) the term is ``scaled_dot_product_attention``'s
    additive mask. When gradients are needed, a mask would have to be differentiated, which sends
    PyTorch's CPU kernels to the math fallback (the ``N^2`` attention matrix kept for backward);
    instead each query is extended by its per-axis terms and each key by its one-hot per-axis
    coordinates, so ``q' . k' = q . k / sqrt(C) + bias`` exactly and the flash kernel runs (the
    values are zero-padded to the same width). In float32 on this project's CPUs, ViTDet-B's
    attention at 512 trains 1.3x (windows) to 1.8x (global blocks) faster so, in memory linear in
    the tokens (``benchmarks/vitdet.py`` measures the whole trunk).
    """
    prefix = num_prefix_tokens
    terms = _axis_terms(q[:, :, prefix:], q_thw, k_thw, tables)
    needs_grad = torch.is_grad_enabled() and (q.requires_grad or any(t.requires_grad for t in tables))
    if not needs_grad:
        bias = _bias(terms, q_thw=q_thw, k_thw=k_thw)
        bias = F.pad(bias, (prefix, 0, prefix, 0)) if prefix else bias  # zero rows and columns
        return attend(q, k, v, attn_mask=bias)
    channels = q.shape[-1]
    query_terms = F.pad(torch.cat(terms, dim=-1), (0, 0, prefix, 0))
    key_codes = _key_coordinates(k_thw, dtype=k.dtype, device=k.device)
    key_codes = F.pad(key_codes, (0, 0, prefix, 0)).expand(*k.shape[:2], -1, -1)
    extended_q = torch.cat([q * channels**-0.5, query_terms.to(q.dtype)], dim=-1)
    extended_k = torch.cat([k, key_codes], dim=-1)
    extended_v = F.pad(v, (0, key_codes.shape[-1]))
    return attend(extended_q, extended_k, extended_v, scale=1.0)[..., :channels]
