"""Multi-head pooling attention (MViT, Fan et al., 2021, section 3.1) with MViTv2's decomposed
relative position embedding and residual pooling connection (Li et al., 2022, section 4.1).

Tokens are ``(B, heads, N, C)`` laid out row-major on a grid ``thw``: ``(H, W)`` for images,
``(T, H, W)`` for video. Queries, keys and values are each pooled on that grid before attending,
so the output has the (usually coarser) query grid. The pieces are small functions so that the
video MViT can reuse them with a temporal axis:

- ``pool_tokens`` reshapes tokens to a grid, applies a pooling op and flattens back;
- ``vislab.layers.rel_pos.decomposed_rel_pos_bias`` gives the additive attention bias of the
  decomposed relative positions: on a ``(T, H, W)`` grid the temporal term of MViTv2 (section
  4.1, ``R_t`` beside ``R_h`` and ``R_w``) is the first table, ``rel_pos_t`` (PySlowFast's
  ``cal_rel_pos_temporal`` beside ``cal_rel_pos_spatial``).

Video MViT prepends a class token to the grid (``num_prefix_tokens=1``). As in PySlowFast's
``attention_pool``, the class token skips every pooling but is normalised with the pooled
tokens; it takes no relative-position bias and no residual pooling.

The parameter layout (``qkv``, ``proj``, ``rel_pos_h``/``rel_pos_w``) and the arithmetic are
those of the official MViTv2 code and timm's ``mvitv2.py``; pooling is "conv" pooling (a
depthwise convolution and LayerNorm per head, shared across heads), kept as ``pool_q.conv`` and
``pool_q.norm`` here.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from vislab.layers.rel_pos import rel_pos_attention
from vislab.layers.sdpa import attend
from vislab.layers.windows import window_partition, window_unpartition

Grid = tuple[int, ...]
AXIS_NAMES = ("t", "h", "w")
CONVOLUTIONS = {2: nn.Conv2d, 3: nn.Conv3d}


def pool_tokens(x: torch.Tensor, thw: Sequence[int], pool: nn.Module, *,
                num_prefix_tokens: int = 0) -> tuple[torch.Tensor, Grid]:
    """Apply ``pool`` (a module on ``(B * heads, C, *thw)`` maps) to tokens ``(B, heads, N, C)``
    on grid ``thw``, after ``num_prefix_tokens`` leading tokens (a class token) that are kept
    as they are; returns the pooled tokens ``(B, heads, N', C)`` and their grid."""
    prefix, x = x[:, :, :num_prefix_tokens], x[:, :, num_prefix_tokens:]
    batch, heads, _, channels = x.shape
    grid = x.reshape(batch * heads, *thw, channels).movedim(-1, 1)
    grid = pool(grid)
    pooled_thw = tuple(grid.shape[2:])
    tokens = grid.flatten(2).transpose(1, 2).reshape(batch, heads, -1, channels)
    return (torch.cat([prefix, tokens], dim=2) if num_prefix_tokens else tokens), pooled_thw


def needs_pooling(kernel: Sequence[int], stride: Sequence[int]) -> bool:
    """A 1x1 kernel with stride 1 leaves tokens as they are, so no pooling layer is built."""
    return math.prod(kernel) > 1 or math.prod(stride) > 1


class TokenPool(nn.Module):
    """The pooling operator P(.; Theta) of MViT section 3.1 in its "conv" form, the one MViTv2
    uses: a depthwise strided convolution with 'same' padding over each head's channels, then
    LayerNorm over those channels (prefix tokens included)."""

    def __init__(self, channels: int, *, kernel: Sequence[int], stride: Sequence[int], eps: float):
        super().__init__()
        self.conv = CONVOLUTIONS[len(kernel)](channels, channels, tuple(kernel), stride=tuple(stride),
                                              padding=tuple(k // 2 for k in kernel), groups=channels,
                                              bias=False)
        self.norm = nn.LayerNorm(channels, eps=eps)

    def forward(self, x: torch.Tensor, thw: Sequence[int], *,
                num_prefix_tokens: int = 0) -> tuple[torch.Tensor, Grid]:
        x, thw = pool_tokens(x, thw, self.conv, num_prefix_tokens=num_prefix_tokens)
        return self.norm(x), thw


class PoolingAttention(nn.Module):
    """Multi-head pooling attention from ``dim`` to ``dim_out`` channels.

    Args:
        num_heads: heads of ``dim_out // num_heads`` channels; pooling and relative positions
            work per head with weights shared across heads.
        input_size: the token grid this layer sees at the design image size; it fixes the
            relative-position table lengths (other grids resample them).
        q_stride, kv_stride, pool_kernel: per-axis pooling strides and kernel; ``q_stride``
            sets the output grid, ``kv_stride`` shrinks keys and values (MViT section 3.1).
        q_pool_kernel: the queries' kernel if not ``pool_kernel``; MViT v1 pools queries only
            where it strides them, so its other blocks pass a kernel of ones (no query pooling).
        num_prefix_tokens: leading tokens (a class token) outside the grid.
        residual_pooling: add the pooled queries to the attention output (MViTv2 eq. (4)).
        rel_pos: decomposed relative position embeddings (MViTv2 section 4.1, eqs. (2)-(3)).
        qkv_bias: learned bias on queries, keys and values.
        eps: the pooling LayerNorms' epsilon.
        window_size: attend inside windows of this many input-grid tokens a side (the hybrid
            window attention of MViTv2's detectors, section 5.1): after pooling, queries and
            keys/values are cut into matching windows of ``window_size // stride`` (padded at the
            bottom and right, as in detectron2); 0 attends globally. 2-D grids only.
    """

    def __init__(self, dim: int, dim_out: int, *, num_heads: int, input_size: Sequence[int],
                 q_stride: Sequence[int], kv_stride: Sequence[int], pool_kernel: Sequence[int],
                 q_pool_kernel: Sequence[int] | None = None, num_prefix_tokens: int = 0,
                 residual_pooling: bool = True, rel_pos: bool = True, qkv_bias: bool = True,
                 eps: float = 1e-6, window_size: int = 0):
        super().__init__()
        if dim_out % num_heads != 0:
            raise ValueError(f"attention width {dim_out} is not divisible by {num_heads} heads")
        if window_size and (len(input_size) != 2 or num_prefix_tokens):
            raise ValueError("window attention needs a 2-D token grid without class tokens")
        self.windows = ((window_size // q_stride[-1], window_size // kv_stride[-1]) if window_size else None)
        self.num_heads = num_heads
        self.dim_out = dim_out
        self.head_dim = dim_out // num_heads
        self.num_prefix_tokens = num_prefix_tokens
        self.residual_pooling = residual_pooling
        self.qkv = nn.Linear(dim, 3 * dim_out, bias=qkv_bias)
        self.proj = nn.Linear(dim_out, dim_out)
        self.pool_q = self._token_pool(pool_kernel if q_pool_kernel is None else q_pool_kernel, q_stride, eps)
        self.pool_k = self._token_pool(pool_kernel, kv_stride, eps)
        self.pool_v = self._token_pool(pool_kernel, kv_stride, eps)
        self.rel_pos_axes = AXIS_NAMES[-len(input_size):] if rel_pos else ()
        for axis, size, qs, kvs in zip(self.rel_pos_axes, input_size, q_stride, kv_stride):
            length = 2 * max(size // qs, size // kvs) - 1
            table = nn.Parameter(torch.empty(length, self.head_dim))
            nn.init.trunc_normal_(table, std=0.02, a=-0.04, b=0.04)
            self.register_parameter(f"rel_pos_{axis}", table)

    def _token_pool(self, kernel: Sequence[int], stride: Sequence[int], eps: float) -> TokenPool | None:
        if not needs_pooling(kernel, stride):
            return None
        return TokenPool(self.head_dim, kernel=kernel, stride=stride, eps=eps)

    @property
    def rel_pos_tables(self) -> list[torch.Tensor]:
        return [getattr(self, f"rel_pos_{axis}") for axis in self.rel_pos_axes]

    def forward(self, x: torch.Tensor, thw: Sequence[int]) -> tuple[torch.Tensor, Grid]:
        """``x`` is ``(B, N, dim)`` on grid ``thw``; returns ``(B, N_q, dim_out)`` and the query grid."""
        batch, tokens, _ = x.shape
        qkv = self.qkv(x).reshape(batch, tokens, 3, self.num_heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        prefix = self.num_prefix_tokens
        q, q_thw = _pool(self.pool_q, q, thw, prefix)
        k, k_thw = _pool(self.pool_k, k, thw, prefix)
        v, _ = _pool(self.pool_v, v, thw, prefix)
        if self.windows is not None:
            out = self._attend_in_windows(q, k, v, q_thw, k_thw)
        else:
            out = self._attend(q, k, v, q_thw, k_thw)
        if self.residual_pooling:  # pooled queries are added to the grid tokens only
            out = out + (F.pad(q[:, :, prefix:], (0, 0, prefix, 0)) if prefix else q)
        out = out.transpose(1, 2).reshape(batch, -1, self.dim_out)
        return self.proj(out), q_thw

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, q_thw: Grid, k_thw: Grid) -> torch.Tensor:
        if not self.rel_pos_axes:
            return attend(q, k, v)
        return rel_pos_attention(q, k, v, q_thw=q_thw, k_thw=k_thw, tables=self.rel_pos_tables,
                                 num_prefix_tokens=self.num_prefix_tokens)

    def _attend_in_windows(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, q_thw: Grid,
                           k_thw: Grid) -> torch.Tensor:
        """Attention inside matching query and key/value windows; ``(B, heads, N_q, C)``."""
        batch, heads, _, channels = q.shape
        q_win, kv_win = self.windows
        q_windows, q_padded = window_partition(q.reshape(batch * heads, *q_thw, channels), q_win)
        k_windows, _ = window_partition(k.reshape(batch * heads, *k_thw, channels), kv_win)
        v_windows, _ = window_partition(v.reshape(batch * heads, *k_thw, channels), kv_win)
        out = self._attend(q_windows.flatten(1, 2)[:, None], k_windows.flatten(1, 2)[:, None],
                           v_windows.flatten(1, 2)[:, None], (q_win, q_win), (kv_win, kv_win))
        out = window_unpartition(out.view_as(q_windows), q_win, padded=q_padded, size=tuple(q_thw))
        return out.reshape(batch, heads, -1, channels)


def _pool(pool: TokenPool | None, x: torch.Tensor, thw: Sequence[int],
          num_prefix_tokens: int) -> tuple[torch.Tensor, Grid]:
    return (x, tuple(thw)) if pool is None else pool(x, thw, num_prefix_tokens=num_prefix_tokens)
