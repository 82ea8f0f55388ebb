"""The pooling-attention trunk shared by MViTv2 for images and MViT / MViTv2 for video.

A block (``MultiScaleBlock``) is MViT's pre-norm transformer block on a token grid whose
attention pools queries, keys and values (``vislab.layers.pool_attention``). A trunk
(``MultiScaleTrunk``) stacks four stages of them: the first block of stages 2-4 pools its
queries with the stage stride, halving the spatial grid while channels and heads double, and
keys and values are pooled with the "adaptive" stride that starts at ``kv_stride`` and is divided
by the queries' at each transition (down to 1), so the key grid shrinks less than the query grid.

The layout, LayerNorm eps 1e-6 and initialisation follow the official code, timm's
``mvitv2.py`` and PySlowFast's ``video_model_builder.MViT``, so their weights convert by renaming
keys.
"""
from __future__ import annotations

import math
import re
from typing import Sequence

import torch
from torch import nn

from vislab.layers import DropPath, Mlp, drop_path_rates
from vislab.layers.pool_attention import PoolingAttention, pool_tokens
from vislab.models.shape_spec import ShapeSpec

STAGE_NAMES = ("stage1", "stage2", "stage3", "stage4")
LAYER_NORM_EPS = 1e-6
MAX_POOLS = {2: nn.MaxPool2d, 3: nn.MaxPool3d}


class MultiScaleBlock(nn.Module):
    """Pre-norm block (MViT, Fan et al., 2021): ``x + attn(LN(x))`` then ``x + mlp(LN(x))``, on
    an ``(H, W)`` or ``(T, H, W)`` token grid after ``num_prefix_tokens`` class tokens.

    A block that pools its queries max-pools its attention shortcut with the same stride (kernel
    stride + 1 along strided axes); a block that changes the width projects the shortcut of the
    branch that changes it with a linear layer on the normalised input: the attention with
    ``dim_mul_in_att`` (MViTv2's default for T/S/B), else the MLP (as MViTv2-L and MViT v1).
    Strides and kernels are per grid axis; ``q_pool_kernel`` is the queries' kernel when it is
    not ``pool_kernel`` (see ``PoolingAttention``); ``pool_norm_eps`` the epsilon of the
    pooling LayerNorms.
    """

    def __init__(self, dim: int, dim_out: int, *, num_heads: int, input_size: Sequence[int],
                 q_stride: Sequence[int], kv_stride: Sequence[int], pool_kernel: Sequence[int],
                 dim_mul_in_att: bool, mlp_ratio: float, residual_pooling: bool, rel_pos: bool,
                 drop_path: float, q_pool_kernel: Sequence[int] | None = None,
                 num_prefix_tokens: int = 0, pool_norm_eps: float = LAYER_NORM_EPS, window_size: int = 0):
        super().__init__()
        attn_dim = dim_out if dim_mul_in_att else dim
        self.num_prefix_tokens = num_prefix_tokens
        self.norm1 = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.attn = PoolingAttention(dim, attn_dim, num_heads=num_heads, input_size=input_size,
                                     q_stride=q_stride, kv_stride=kv_stride, pool_kernel=pool_kernel,
                                     q_pool_kernel=q_pool_kernel, num_prefix_tokens=num_prefix_tokens,
                                     residual_pooling=residual_pooling, rel_pos=rel_pos,
                                     eps=pool_norm_eps, window_size=window_size)
        self.shortcut_proj_attn = nn.Linear(dim, attn_dim) if attn_dim != dim else None
        skip_kernel = tuple(s + 1 if s > 1 else s for s in q_stride)
        self.shortcut_pool = (MAX_POOLS[len(q_stride)](skip_kernel, stride=tuple(q_stride),
                                                       padding=tuple(k // 2 for k in skip_kernel))
                              if math.prod(q_stride) > 1 else None)
        self.norm2 = nn.LayerNorm(attn_dim, eps=LAYER_NORM_EPS)
        self.mlp = Mlp(attn_dim, int(attn_dim * mlp_ratio), out_dim=dim_out)
        self.shortcut_proj_mlp = nn.Linear(attn_dim, dim_out) if dim_out != attn_dim else None
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor, thw: tuple[int, ...]) -> tuple[torch.Tensor, tuple[int, ...]]:
        normed = self.norm1(x)
        shortcut = x if self.shortcut_proj_attn is None else self.shortcut_proj_attn(normed)
        if self.shortcut_pool is not None:
            shortcut = pool_tokens(shortcut.unsqueeze(1), thw, self.shortcut_pool,
                                   num_prefix_tokens=self.num_prefix_tokens)[0].squeeze(1)
        attended, thw = self.attn(normed, thw)
        x = shortcut + self.drop_path(attended)
        normed = self.norm2(x)
        shortcut = x if self.shortcut_proj_mlp is None else self.shortcut_proj_mlp(normed)
        return shortcut + self.drop_path(self.mlp(normed)), thw


class MultiScaleTrunk(nn.Module):
    """Four stages of ``MultiScaleBlock`` (``stage1``..``stage4``, each an ``nn.ModuleList``) and
    the final LayerNorm, with what the image and video trunks do alike with them: run them in
    turn, describe their outputs, and number their blocks for layer-wise learning-rate decay.
    A subclass embeds its input, calls ``_add_stages`` and reads ``_run_stages``."""

    def _add_stages(self, *, grid: Sequence[int], patch_stride: int, q_stride: Sequence[int],
                    kv_stride: Sequence[int], depths: Sequence[int], embed_dim: int, num_heads: int,
                    pool_kernel: Sequence[int], pool_q_in_every_block: bool, dim_mul_in_att: bool,
                    residual_pooling: bool, rel_pos: bool, mlp_ratio: float, drop_path_rate: float,
                    num_prefix_tokens: int = 0, pool_norm_eps: float = LAYER_NORM_EPS,
                    window_size: int = 0, final_norm: bool = True) -> None:
        """Builds the stages on a ``grid`` of tokens (per axis) at spatial stride ``patch_stride``.

        ``q_stride`` is the query stride (per axis) of the first block of stages 2-4 and
        ``kv_stride`` the key/value stride of stage 1. With ``pool_q_in_every_block`` (MViTv2)
        every block pools its queries with ``pool_kernel``, else only the strided ones (MViT v1).
        With ``dim_mul_in_att`` a stage widens at its first attention, else at the previous
        stage's last MLP.

        ``window_size`` > 0 is the hybrid window attention of MViTv2's detectors (section 5.1;
        detectron2's ``MViT``): stage ``s`` (from 0) attends in windows of ``window_size / 2^s``
        query tokens, except the last block of stages 2-4, which attends globally, with its
        key/value stride doubled in stages 2 and 3 to keep global attention affordable.
        ``final_norm=False`` leaves out the classification path's final LayerNorm (detection).
        """
        if len(depths) != len(STAGE_NAMES):
            raise ValueError(f"depths must list {len(STAGE_NAMES)} stages, got {list(depths)}")
        no_pooling = (1,) * len(grid)
        widths = [embed_dim * 2**i for i in range(len(depths))]
        rates = iter(drop_path_rates(drop_path_rate, sum(depths)))
        grid, dim, stride, stage_kv_stride = tuple(grid), embed_dim, patch_stride, tuple(kv_stride)
        self._shapes: dict[str, ShapeSpec] = {}
        self._first_block_ids: dict[str, int] = {}
        for index, (name, depth) in enumerate(zip(STAGE_NAMES, depths)):
            stage_q_stride = no_pooling if index == 0 else tuple(q_stride)
            stage_kv_stride = tuple(max(kv // q, 1) for kv, q in zip(stage_kv_stride, stage_q_stride))
            stride *= stage_q_stride[-1]
            stage_width = widths[index] if dim_mul_in_att else widths[min(index + 1, len(widths) - 1)]
            blocks = []
            for b in range(depth):
                dim_out = stage_width if dim_mul_in_att or b == depth - 1 else dim
                block_q_stride = stage_q_stride if b == 0 else no_pooling
                pools_q = pool_q_in_every_block or math.prod(block_q_stride) > 1
                global_block = index > 0 and b == depth - 1
                block_kv_stride = (tuple(2 * s for s in stage_kv_stride)
                                   if window_size and global_block and index < len(depths) - 1 else stage_kv_stride)
                block_window = (0 if not window_size or global_block
                                else window_size // 2**index * block_q_stride[-1])
                blocks.append(MultiScaleBlock(
                    dim, dim_out, num_heads=num_heads * 2**index, input_size=grid,
                    q_stride=block_q_stride, kv_stride=block_kv_stride, pool_kernel=tuple(pool_kernel),
                    q_pool_kernel=None if pools_q else no_pooling, num_prefix_tokens=num_prefix_tokens,
                    dim_mul_in_att=dim_mul_in_att, mlp_ratio=mlp_ratio, residual_pooling=residual_pooling,
                    rel_pos=rel_pos, pool_norm_eps=pool_norm_eps, drop_path=next(rates), window_size=block_window))
                grid = tuple(size // s for size, s in zip(grid, block_q_stride))
                dim = dim_out
            self._first_block_ids[name] = sum(depths[:index])
            self.add_module(name, nn.ModuleList(blocks))
            self._shapes[name] = ShapeSpec(channels=dim, stride=stride)
        self.norm = nn.LayerNorm(dim, eps=LAYER_NORM_EPS) if final_norm else nn.Identity()
        self.num_features = dim
        self.num_blocks = sum(depths)

    def _run_stages(self, x: torch.Tensor, thw: tuple[int, ...]) -> list[tuple[str, torch.Tensor, tuple[int, ...]]]:
        """``(name, tokens, grid)`` after each stage, from the embedded tokens ``x`` on grid ``thw``."""
        stages = []
        for name in STAGE_NAMES:
            for block in getattr(self, name):
                x, thw = block(x, thw)
            stages.append((name, x, thw))
        return stages

    def _embedding_names(self) -> list[str]:
        """Parameters beside ``patch_embed`` that sit before the first block (tokens, position tables)."""
        return []

    def output_shape(self) -> dict[str, ShapeSpec]:
        return dict(self._shapes)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.forward_features(x)

    def no_weight_decay(self) -> set[str]:
        tables = {name for name, _ in self.named_parameters() if ".rel_pos_" in name}
        return tables | set(self._embedding_names())

    @property
    def num_lr_layers(self) -> int:
        return self.num_blocks + 1

    def lr_layer_id(self, name: str) -> int:
        """Patch embedding (and class token, position tables) 0, block ``i`` (counted across
        stages) ``i + 1``, final norm last."""
        if name.startswith("patch_embed.") or name in self._embedding_names():
            return 0
        match = re.match(r"(stage\d)\.(\d+)\.", name)
        if match:
            return self._first_block_ids[match.group(1)] + int(match.group(2)) + 1
        return self.num_lr_layers


def init_weights(module: nn.Module) -> None:
    """timm's and the official init: truncated normal (std 0.02, cut at 2 std) for linear
    weights, zero biases; convolutions and norms keep PyTorch's defaults."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02, a=-0.04, b=0.04)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
