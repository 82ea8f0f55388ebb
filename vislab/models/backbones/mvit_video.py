"""Multiscale Vision Transformers for video: MViT (Fan et al., 2021) and MViTv2 (Li et al., 2022).

A 3x7x7 convolution with stride 2x4x4 embeds a clip into a ``(T/2, H/4, W/4)`` grid of "cube"
tokens (MViT-B's ``cube_1``) and a class token is prepended. Four stages of pooling-attention
blocks follow (``vislab.models.backbones.mvit_trunk``, the image MViTv2's, on a 3-D grid): the
first block of stages 2-4 pools its queries with stride 1x2x2, halving the spatial grid and
doubling channels and heads, while keys and values are pooled with the "adaptive" stride that
starts at 1x8x8 and shrinks with the queries' (down to 1). Pooling never touches
the class token, and the classifier reads it after the final LayerNorm.

The two versions differ in four switches, all the official configs' (PySlowFast
``MVIT_B_16x4_CONV`` and ``MVITv2_S_16x4``):

- MViT v1 adds separate space and time absolute position embeddings (``SEP_POS_EMBED``), pools
  queries only where it strides them, and widens the tokens in a stage's last MLP (its pooling
  LayerNorms also keep PyTorch's default epsilon, 1e-5, where MViTv2's use 1e-6);
- MViTv2 has no absolute position embedding but decomposed relative positions along t, h and w
  (section 4.1), adds the pooled queries back (residual pooling, eq. (4)), pools queries in
  every block (kernel 3, stride 1 inside a stage) and widens in a stage's first attention.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from vislab.models.backbones.mvit_trunk import LAYER_NORM_EPS, STAGE_NAMES, MultiScaleTrunk, init_weights

PATCH_KERNEL = (3, 7, 7)
PATCH_STRIDE = (2, 4, 4)
Q_STRIDE = (1, 2, 2)  # query pooling stride at each stage transition
SPATIAL_STRIDE = PATCH_STRIDE[1] * Q_STRIDE[1] ** (len(STAGE_NAMES) - 1)
NUM_CLASS_TOKENS = 1


class VideoMViT(MultiScaleTrunk):
    """An MViT / MViTv2 trunk on clips ``(B, C, T, H, W)``; ``forward_features`` returns
    ``stage1``..``stage4`` as ``(B, C, T/2, H/s, W/s)`` maps (spatial strides 4-32, temporal
    stride 2; class token left out, no final norm) and ``forward_pooled`` the class token after
    the final LayerNorm.

    Args:
        depths: blocks per stage, e.g. (1, 2, 11, 2) for the 16-block models.
        embed_dim, num_heads: width and heads of stage 1, doubled at each later stage.
        num_frames, img_size: the clip the position tables are sized for; with
            ``sep_pos_embed`` the model takes only that clip size.
        pool_kernel: query/key/value pooling kernel per (t, h, w) axis.
        kv_stride: key/value pooling stride in stage 1, divided by the query stride at each
            stage transition down to 1.
        pool_q_in_every_block: pool queries with ``pool_kernel`` in every block (MViTv2) rather
            than only where they are strided (MViT v1).
        dim_mul_in_att: widen at a stage's first attention (True) or at the previous stage's
            last MLP (False).
        residual_pooling: add pooled queries to the attention output (MViTv2 eq. (4)).
        rel_pos: decomposed relative position embeddings along t, h and w (MViTv2 section 4.1).
        sep_pos_embed: absolute position embeddings, one over space and one over time, added
            with a third for the class token (MViT v1, PySlowFast ``SEP_POS_EMBED``).
        pool_norm_eps: epsilon of the LayerNorms after pooling (1e-5 in MViT v1).
        mlp_ratio: MLP hidden width over its input width.
        drop_path_rate: stochastic depth, rising linearly over all blocks to this rate.
        in_chans: input channels.
    """

    def __init__(self, *, depths: Sequence[int], embed_dim: int = 96, num_heads: int = 1,
                 num_frames: int = 16, img_size: int = 224, pool_kernel: Sequence[int] = (3, 3, 3),
                 kv_stride: Sequence[int] = (1, 8, 8), pool_q_in_every_block: bool = True,
                 dim_mul_in_att: bool = True, residual_pooling: bool = True, rel_pos: bool = True,
                 sep_pos_embed: bool = False, pool_norm_eps: float = LAYER_NORM_EPS,
                 mlp_ratio: float = 4.0, drop_path_rate: float = 0.0, in_chans: int = 3):
        super().__init__()
        _check_clip_size(num_frames, img_size, img_size, what="num_frames/img_size")
        self.patch_embed = nn.Conv3d(in_chans, embed_dim, PATCH_KERNEL, stride=PATCH_STRIDE,
                                     padding=tuple(k // 2 for k in PATCH_KERNEL))
        self.patch_grid = (num_frames // PATCH_STRIDE[0], img_size // PATCH_STRIDE[1],
                           img_size // PATCH_STRIDE[2])
        self.cls_token = nn.Parameter(torch.zeros(1, NUM_CLASS_TOKENS, embed_dim))
        self.sep_pos_embed = sep_pos_embed
        if sep_pos_embed:
            frames, height, width = self.patch_grid
            self.pos_embed_spatial = nn.Parameter(torch.zeros(1, height * width, embed_dim))
            self.pos_embed_temporal = nn.Parameter(torch.zeros(1, frames, embed_dim))
            self.pos_embed_class = nn.Parameter(torch.zeros(1, NUM_CLASS_TOKENS, embed_dim))
        self._add_stages(grid=self.patch_grid, patch_stride=PATCH_STRIDE[1], q_stride=Q_STRIDE, kv_stride=kv_stride,
                         depths=depths, embed_dim=embed_dim, num_heads=num_heads, pool_kernel=pool_kernel,
                         pool_q_in_every_block=pool_q_in_every_block, dim_mul_in_att=dim_mul_in_att,
                         residual_pooling=residual_pooling, rel_pos=rel_pos, mlp_ratio=mlp_ratio,
                         drop_path_rate=drop_path_rate, num_prefix_tokens=NUM_CLASS_TOKENS,
                         pool_norm_eps=pool_norm_eps)
        self.apply(init_weights)
        for token in self._embedding_names():
            nn.init.trunc_normal_(getattr(self, token), std=0.02, a=-0.04, b=0.04)

    def _embedding_names(self) -> list[str]:
        names = ["cls_token"]
        if self.sep_pos_embed:
            names += ["pos_embed_spatial", "pos_embed_temporal", "pos_embed_class"]
        return names

    def _embed(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, ...]]:
        """Cube tokens ``(B, 1 + T'H'W', C)`` with the class token first, and their grid."""
        _check_clip_size(*x.shape[-3:], what="input")
        x = self.patch_embed(x)
        thw = tuple(x.shape[2:])
        x = x.flatten(2).transpose(1, 2)
        cls_token = self.cls_token.expand(x.shape[0], -1, -1)
        if self.sep_pos_embed:
            if thw != self.patch_grid:
                raise ValueError(f"this MViT's position embeddings fit a {self.patch_grid} token grid "
                                 f"(frames x height x width {self._clip_size()}); got a {thw} grid")
            # token t * H'W' + s gets temporal row t plus spatial row s (PySlowFast SEP_POS_EMBED)
            grid_embed = self.pos_embed_temporal[:, :, None] + self.pos_embed_spatial[:, None]
            x = x + grid_embed.flatten(1, 2)
            cls_token = cls_token + self.pos_embed_class
        return torch.cat([cls_token, x], dim=1), thw

    def _clip_size(self) -> str:
        return "x".join(str(size * stride) for size, stride in zip(self.patch_grid, PATCH_STRIDE))

    def _stage_tokens(self, x: torch.Tensor) -> list[tuple[str, torch.Tensor, tuple[int, ...]]]:
        """``(name, tokens (B, 1 + L, C), grid (T, H, W))`` after each stage."""
        return self._run_stages(*self._embed(x))

    def forward_features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {name: tokens[:, NUM_CLASS_TOKENS:].transpose(1, 2).reshape(tokens.shape[0], -1, *thw)
                for name, tokens, thw in self._stage_tokens(x)}

    def forward_pooled(self, x: torch.Tensor) -> torch.Tensor:
        """The class token of the last stage after the final LayerNorm (PySlowFast's MViT with
        ``CLS_EMBED_ON``; pytorchvideo's ``seq_pool_type="cls"``)."""
        _, tokens, _ = self._stage_tokens(x)[-1]
        return self.norm(tokens[:, 0])


def _check_clip_size(frames: int, height: int, width: int, *, what: str) -> None:
    if frames % PATCH_STRIDE[0] or height % SPATIAL_STRIDE or width % SPATIAL_STRIDE:
        raise ValueError(f"video MViT needs a frame count that is a multiple of {PATCH_STRIDE[0]} and "
                         f"sides that are multiples of {SPATIAL_STRIDE}; {what} is {frames}x{height}x{width}")
