"""Improved Multiscale Vision Transformer, MViTv2 (Li et al., 2022), for images.

A 7x7 stride-4 convolution embeds the image into a grid of tokens; four stages of pooling-
attention blocks follow (``vislab.layers.pool_attention``). The first block of stages 2-4 pools
its queries with stride 2, halving the grid, while keys and values are pooled with an "adaptive"
stride that starts at ``kv_stride`` and halves with the queries' (down to 1), so the key grid
shrinks less than the query grid (the official configs' adaptive key-value stride). Channels and heads
double at each stage. There is no absolute position embedding and no class token: position
comes from the decomposed relative position embeddings, and the classifier reads the mean of
the last stage's tokens after the final LayerNorm.

The layout, LayerNorm eps 1e-6 and initialisation follow the official code and timm's
``mvitv2.py``, so timm weights convert by renaming keys.
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
PATCH_STRIDE = 4
Q_STRIDE = 2  # query pooling stride at each stage transition
TOTAL_STRIDE = PATCH_STRIDE * Q_STRIDE ** (len(STAGE_NAMES) - 1)
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
                 num_prefix_tokens: int = 0, pool_norm_eps: float = LAYER_NORM_EPS):
        super().__init__()
        attn_dim = dim_out if dim_mul_in_att else dim
        self.num_prefix_tokens = num_prefix_tokens
        self.norm1 = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.attn = PoolingAttention(dim, attn_dim, num_heads=num_heads, input_size=input_size,
                                     q_stride=q_stride, kv_stride=kv_stride, pool_kernel=pool_kernel,
                                     q_pool_kernel=q_pool_kernel, num_prefix_tokens=num_prefix_tokens,
                                     residual_pooling=residual_pooling, rel_pos=rel_pos,
                                     eps=pool_norm_eps)
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


class MViTv2(nn.Module):
    """An MViTv2 trunk; ``forward_features`` returns ``stage1``..``stage4`` (strides 4-32), each
    the last block's tokens of that stage as an ``(N, C, H, W)`` map, without a norm (detection
    heads add their own; the final norm belongs to the classification path).

    With ``dim_mul_in_att=False`` a stage's last block widens the tokens for the next stage in its
    MLP, so ``stage1``..``stage3`` carry the next stage's width.

    Args:
        embed_dim, num_heads: width and heads of stage 1, doubled at each later stage.
        depths: blocks per stage, e.g. (1, 2, 5, 2) for MViTv2-T.
        pool_kernel: side of the query/key/value pooling kernels (3).
        kv_stride: key/value pooling stride in stage 1, divided by the query stride at each stage
            transition down to 1 ("adaptive" strides: 4, 2, 1, 1).
        dim_mul_in_att: widen at a stage's first attention (True) or at the previous stage's
            last MLP (False, MViTv2-L).
        residual_pooling: add pooled queries to the attention output (MViTv2 eq. (4)).
        rel_pos: decomposed relative position embeddings (MViTv2 section 4.1).
        mlp_ratio: MLP hidden width over its input width.
        drop_path_rate: stochastic depth, rising linearly over all blocks to this rate.
        img_size: the input side the relative-position tables are sized for; other inputs
            resample them linearly.
        in_chans: input channels.
    """

    def __init__(self, *, depths: Sequence[int], embed_dim: int = 96, num_heads: int = 1,
                 pool_kernel: int = 3, kv_stride: int = 4, dim_mul_in_att: bool = True,
                 residual_pooling: bool = True, rel_pos: bool = True, mlp_ratio: float = 4.0,
                 drop_path_rate: float = 0.0, img_size: int = 224, in_chans: int = 3):
        super().__init__()
        if len(depths) != len(STAGE_NAMES):
            raise ValueError(f"depths must list {len(STAGE_NAMES)} stages, got {list(depths)}")
        if img_size % TOTAL_STRIDE != 0:
            raise ValueError(f"img_size {img_size} is not a multiple of the total stride {TOTAL_STRIDE}")
        self.patch_embed = nn.Conv2d(in_chans, embed_dim, 7, stride=PATCH_STRIDE, padding=3)
        widths = [embed_dim * 2**i for i in range(len(depths))]
        rates = iter(drop_path_rates(drop_path_rate, sum(depths)))
        grid = (img_size // PATCH_STRIDE, img_size // PATCH_STRIDE)
        dim, stride, stage_kv_stride = embed_dim, PATCH_STRIDE, kv_stride
        self._shapes: dict[str, ShapeSpec] = {}
        self._first_block_ids: dict[str, int] = {}
        for index, (name, depth) in enumerate(zip(STAGE_NAMES, depths)):
            q_stride = 1 if index == 0 else Q_STRIDE
            stage_kv_stride = max(stage_kv_stride // q_stride, 1)
            stride *= q_stride
            stage_width = widths[index] if dim_mul_in_att else widths[min(index + 1, len(widths) - 1)]
            blocks = []
            for b in range(depth):
                dim_out = stage_width if dim_mul_in_att or b == depth - 1 else dim
                block_q_stride = q_stride if b == 0 else 1
                blocks.append(MultiScaleBlock(
                    dim, dim_out, num_heads=num_heads * 2**index, input_size=grid,
                    q_stride=(block_q_stride,) * 2, kv_stride=(stage_kv_stride,) * 2,
                    pool_kernel=(pool_kernel,) * 2,
                    dim_mul_in_att=dim_mul_in_att, mlp_ratio=mlp_ratio,
                    residual_pooling=residual_pooling, rel_pos=rel_pos, drop_path=next(rates)))
                grid = (grid[0] // block_q_stride, grid[1] // block_q_stride)
                dim = dim_out
            self._first_block_ids[name] = sum(depths[:index])
            self.add_module(name, nn.ModuleList(blocks))
            self._shapes[name] = ShapeSpec(channels=dim, stride=stride)
        self.norm = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.num_features = dim
        self.num_blocks = sum(depths)
        self.apply(init_weights)

    def output_shape(self) -> dict[str, ShapeSpec]:
        return dict(self._shapes)

    def _stage_tokens(self, x: torch.Tensor) -> list[tuple[str, torch.Tensor, tuple[int, int]]]:
        """``(name, tokens (N, L, C), grid (H, W))`` after each stage."""
        height, width = x.shape[-2:]
        if height % TOTAL_STRIDE or width % TOTAL_STRIDE:
            raise ValueError(f"MViTv2 needs input sides that are multiples of {TOTAL_STRIDE}; "
                             f"got {height}x{width}")
        x = self.patch_embed(x)
        thw = tuple(x.shape[2:])
        x = x.flatten(2).transpose(1, 2)
        stages = []
        for name in STAGE_NAMES:
            for block in getattr(self, name):
                x, thw = block(x, thw)
            stages.append((name, x, thw))
        return stages

    def forward_features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {name: tokens.transpose(1, 2).reshape(tokens.shape[0], -1, *thw)
                for name, tokens, thw in self._stage_tokens(x)}

    def forward_pooled(self, x: torch.Tensor) -> torch.Tensor:
        """The final LayerNorm on every token of the last stage, then their mean (timm's and the
        official code's order for MViTv2 without a class token)."""
        _, tokens, _ = self._stage_tokens(x)[-1]
        return self.norm(tokens).mean(dim=1)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.forward_features(x)

    def no_weight_decay(self) -> set[str]:
        return {name for name, _ in self.named_parameters() if ".rel_pos_" in name}

    @property
    def num_lr_layers(self) -> int:
        return self.num_blocks + 1

    def lr_layer_id(self, name: str) -> int:
        """Patch embedding 0, block ``i`` (counted across stages) ``i + 1``, final norm last."""
        if name.startswith("patch_embed."):
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
