"""Improved Multiscale Vision Transformer, MViTv2 (Li et al., 2022), for images.

A 7x7 stride-4 convolution embeds the image into a grid of tokens; four stages of pooling-
attention blocks follow (``vislab.models.backbones.mvit_trunk``), with query stride 2 at each
stage transition and key/value stride ``kv_stride`` (4 by default) in stage 1. There is no
absolute position embedding and no class token: position comes from the decomposed relative
position embeddings, and the classifier reads the mean of the last stage's tokens after the final
LayerNorm.

The layout, LayerNorm eps 1e-6 and initialisation follow the official code and timm's
``mvitv2.py``, so timm weights convert by renaming keys.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from vislab.models.backbones.mvit_trunk import STAGE_NAMES, MultiScaleTrunk, init_weights

PATCH_STRIDE = 4
Q_STRIDE = 2  # query pooling stride at each stage transition
TOTAL_STRIDE = PATCH_STRIDE * Q_STRIDE ** (len(STAGE_NAMES) - 1)


class MViTv2(MultiScaleTrunk):
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
        window_size: hybrid window attention for detection (section 5.1): windows of this many
            stage-1 tokens a side (56, the whole 224-pixel grid), halved at each stage, with the
            last block of stages 2-4 global; 0 attends globally everywhere (classification).
        final_norm: the final LayerNorm of the classification path (a detection trunk has none).
    """

    def __init__(self, *, depths: Sequence[int], embed_dim: int = 96, num_heads: int = 1,
                 pool_kernel: int = 3, kv_stride: int = 4, dim_mul_in_att: bool = True,
                 residual_pooling: bool = True, rel_pos: bool = True, mlp_ratio: float = 4.0,
                 drop_path_rate: float = 0.0, img_size: int = 224, in_chans: int = 3, window_size: int = 0,
                 final_norm: bool = True):
        super().__init__()
        if img_size % TOTAL_STRIDE != 0:
            raise ValueError(f"img_size {img_size} is not a multiple of the total stride {TOTAL_STRIDE}")
        self.patch_embed = nn.Conv2d(in_chans, embed_dim, 7, stride=PATCH_STRIDE, padding=3)
        self._add_stages(grid=(img_size // PATCH_STRIDE,) * 2, patch_stride=PATCH_STRIDE, q_stride=(Q_STRIDE,) * 2,
                         kv_stride=(kv_stride,) * 2, depths=depths, embed_dim=embed_dim, num_heads=num_heads,
                         pool_kernel=(pool_kernel,) * 2, pool_q_in_every_block=True, dim_mul_in_att=dim_mul_in_att,
                         residual_pooling=residual_pooling, rel_pos=rel_pos, mlp_ratio=mlp_ratio,
                         drop_path_rate=drop_path_rate, window_size=window_size, final_norm=final_norm)
        self.apply(init_weights)

    def _stage_tokens(self, x: torch.Tensor) -> list[tuple[str, torch.Tensor, tuple[int, int]]]:
        """``(name, tokens (N, L, C), grid (H, W))`` after each stage."""
        height, width = x.shape[-2:]
        if height % TOTAL_STRIDE or width % TOTAL_STRIDE:
            raise ValueError(f"MViTv2 needs input sides that are multiples of {TOTAL_STRIDE}; "
                             f"got {height}x{width}")
        x = self.patch_embed(x)
        thw = tuple(x.shape[2:])
        return self._run_stages(x.flatten(2).transpose(1, 2), thw)

    def forward_features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {name: tokens.transpose(1, 2).reshape(tokens.shape[0], -1, *thw)
                for name, tokens, thw in self._stage_tokens(x)}

    def forward_pooled(self, x: torch.Tensor) -> torch.Tensor:
        """The final LayerNorm on every token of the last stage, then their mean (timm's and the
        official code's order for MViTv2 without a class token)."""
        _, tokens, _ = self._stage_tokens(x)[-1]
        return self.norm(tokens).mean(dim=1)
