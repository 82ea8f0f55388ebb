"""Vision Transformer (Dosovitskiy et al., 2021), with the options of DeiT, CaiT and MAE.

The image is cut into ``patch_size`` squares, each linearly embedded; a class token is prepended,
position embeddings are added and pre-norm transformer blocks follow (ViT section 3.1, eqs. 1-4).
The layout, LayerNorm eps 1e-6 and initialisation are timm's ``VisionTransformer`` (DeiT's code),
so timm/DeiT weights convert by renaming keys. The pieces an MAE encoder needs to run the blocks
on a subset of the tokens are separate methods: ``embed_patches``, ``add_position``,
``prepend_class_token`` and the ``blocks`` stack.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from vislab.layers import DropPath, Mlp, drop_path_rates
from vislab.layers.attention import MultiHeadSelfAttention
from vislab.layers.pos_embed import resize_grid_position_embedding, sincos_2d_position_embedding
from vislab.models.shape_spec import ShapeSpec

GLOBAL_POOLS = ("token", "avg")
POSITION_EMBEDDINGS = ("learned", "sincos")
LAYER_NORM_EPS = 1e-6


class LayerScale(nn.Module):
    """A learned per-channel scale on a residual branch, starting at ``init_value``
    (CaiT, Touvron et al., 2021, section 2.1, "LayerScale")."""

    def __init__(self, dim: int, *, init_value: float):
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), float(init_value)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class TransformerBlock(nn.Module):
    """Pre-norm block (ViT eqs. 2-3): ``x + attn(LN(x))`` then ``x + mlp(LN(x))``, each branch
    optionally scaled by LayerScale and dropped per sample by stochastic depth."""

    def __init__(self, dim: int, *, num_heads: int, mlp_ratio: float, qkv_bias: bool,
                 layer_scale_init: float | None, drop_path: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.attn = MultiHeadSelfAttention(dim, num_heads=num_heads, qkv_bias=qkv_bias)
        self.layer_scale1 = _layer_scale(dim, layer_scale_init)
        self.norm2 = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.layer_scale2 = _layer_scale(dim, layer_scale_init)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.layer_scale1(self.attn(self.norm1(x))))
        return x + self.drop_path(self.layer_scale2(self.mlp(self.norm2(x))))


def _layer_scale(dim: int, init_value: float | None) -> nn.Module:
    return nn.Identity() if init_value is None else LayerScale(dim, init_value=init_value)


class VisionTransformer(nn.Module):
    """A plain ViT trunk; ``forward_features`` returns the stride-``patch_size`` map ``last``
    (the last block's patch tokens, before the final norm) and ``block{i}`` for each index in
    ``out_blocks`` (0-based), the intermediate maps ViTDet and Li et al. (2021) read.

    Args:
        patch_size, embed_dim, depth, num_heads, mlp_ratio: the ViT size (ViT table 1).
        qkv_bias: learned bias on queries, keys and values.
        class_token: prepend a learned class token (ViT eq. 1).
        global_pool: "token" reads the class token after the final norm; "avg" averages the
            patch tokens and applies the final norm after pooling (timm's ``fc_norm``; MAE's
            fine-tuning, section A.2).
        pos_embed: "learned", or "sincos" for MAE's fixed 2-D sine-cosine embedding (a buffer,
            not trained; the class token's entry is zero as in MAE).
        layer_scale_init: None for no LayerScale, else the gammas' initial value (CaiT).
        drop_path_rate: stochastic depth, rising linearly to this rate at the last block (DeiT).
        img_size: the input side (or (height, width)) the position-embedding grid is built for;
            other inputs resample it bicubically.
    """

    def __init__(self, *, patch_size: int = 16, embed_dim: int = 768, depth: int = 12,
                 num_heads: int = 12, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 class_token: bool = True, global_pool: str = "token", pos_embed: str = "learned",
                 layer_scale_init: float | None = None, drop_path_rate: float = 0.0,
                 img_size: int | Sequence[int] = 224, out_blocks: Sequence[int] = (),
                 in_chans: int = 3):
        super().__init__()
        if global_pool not in GLOBAL_POOLS:
            raise ValueError(f"unknown global_pool {global_pool!r}; choose one of {', '.join(GLOBAL_POOLS)}")
        if global_pool == "token" and not class_token:
            raise ValueError("global_pool='token' needs class_token=True; use global_pool='avg'")
        if pos_embed not in POSITION_EMBEDDINGS:
            raise ValueError(f"unknown pos_embed {pos_embed!r}; choose one of {', '.join(POSITION_EMBEDDINGS)}")
        bad_blocks = [i for i in out_blocks if not 0 <= i < depth]
        if bad_blocks:
            raise ValueError(f"out_blocks {bad_blocks} are not block indices of a depth-{depth} ViT (0..{depth - 1})")
        height, width = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        self._check_input_size(height, width, patch_size=patch_size)

        self.patch_size = patch_size
        self.embed_dim = self.num_features = embed_dim
        self.global_pool = global_pool
        self.grid_size = (height // patch_size, width // patch_size)
        self.num_prefix_tokens = 1 if class_token else 0
        self.out_blocks = tuple(sorted(set(out_blocks)))

        self.patch_embed = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim)) if class_token else None
        num_positions = self.num_prefix_tokens + self.grid_size[0] * self.grid_size[1]
        if pos_embed == "learned":
            self.pos_embed = nn.Parameter(torch.zeros(1, num_positions, embed_dim))
        else:
            grid = sincos_2d_position_embedding(embed_dim=embed_dim, grid_size=self.grid_size)
            prefix = torch.zeros(self.num_prefix_tokens, embed_dim)
            self.register_buffer("pos_embed", torch.cat([prefix, grid])[None])
        rates = drop_path_rates(drop_path_rate, depth)
        self.blocks = nn.Sequential(*[
            TransformerBlock(embed_dim, num_heads=num_heads, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias,
                             layer_scale_init=layer_scale_init, drop_path=rates[i])
            for i in range(depth)
        ])
        self.norm = nn.LayerNorm(embed_dim, eps=LAYER_NORM_EPS)
        self._init_weights()

    def _init_weights(self) -> None:
        """timm/DeiT initialisation: truncated normal (std 0.02) for the learned position
        embedding, the class token and every Linear weight; zero Linear biases; the patch
        embedding keeps PyTorch's default, as in timm."""
        if isinstance(self.pos_embed, nn.Parameter):
            nn.init.trunc_normal_(self.pos_embed, std=0.02)
        if self.cls_token is not None:
            nn.init.trunc_normal_(self.cls_token, std=0.02)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    @staticmethod
    def _check_input_size(height: int, width: int, *, patch_size: int) -> None:
        if height % patch_size or width % patch_size:
            raise ValueError(f"input size {height}x{width} is not divisible by the patch size "
                             f"{patch_size}: both sides must be multiples of {patch_size}")

    @property
    def num_lr_layers(self) -> int:
        return len(self.blocks) + 1

    def lr_layer_id(self, name: str) -> int:
        """0 for the patch embedding, class token and position embedding; ``i + 1`` for block
        ``i``; ``num_lr_layers`` for the final norm (BEiT's ``get_num_layer_for_vit``)."""
        if name.startswith("blocks."):
            return int(name.split(".")[1]) + 1
        if name.startswith(("patch_embed.", "cls_token", "pos_embed")):
            return 0
        return self.num_lr_layers

    def no_weight_decay(self) -> set[str]:
        names = {"pos_embed"} if isinstance(self.pos_embed, nn.Parameter) else set()
        return names | ({"cls_token"} if self.cls_token is not None else set())

    def output_shape(self) -> dict[str, ShapeSpec]:
        spec = ShapeSpec(channels=self.embed_dim, stride=self.patch_size)
        return {**{f"block{i}": spec for i in self.out_blocks}, "last": spec}

    def embed_patches(self, images: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """``(N, h * w, C)`` patch tokens in row-major order and their grid ``(h, w)``."""
        self._check_input_size(images.shape[-2], images.shape[-1], patch_size=self.patch_size)
        patches = self.patch_embed(images)
        return patches.flatten(2).transpose(1, 2), (patches.shape[-2], patches.shape[-1])

    def add_position(self, tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """Add the position embedding of a ``grid`` of patch tokens (no class token), resampled
        from the built grid when ``grid`` differs."""
        pos_embed = resize_grid_position_embedding(self.pos_embed, old_grid=self.grid_size, new_grid=grid,
                                                   num_prefix_tokens=self.num_prefix_tokens)
        return tokens + pos_embed[:, self.num_prefix_tokens:]

    def prepend_class_token(self, tokens: torch.Tensor) -> torch.Tensor:
        """Prepend the class token plus its position embedding (tokens unchanged without one)."""
        if self.cls_token is None:
            return tokens
        cls = self.cls_token + self.pos_embed[:, :1]
        return torch.cat([cls.expand(tokens.shape[0], -1, -1), tokens], dim=1)

    def _input_tokens(self, images: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        tokens, grid = self.embed_patches(images)
        return self.prepend_class_token(self.add_position(tokens, grid)), grid

    def _to_map(self, tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        patches = tokens[:, self.num_prefix_tokens:]
        return patches.transpose(1, 2).reshape(patches.shape[0], self.embed_dim, *grid)

    def forward_features(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        tokens, grid = self._input_tokens(images)
        features = {}
        for index, block in enumerate(self.blocks):
            tokens = block(tokens)
            if index in self.out_blocks:
                features[f"block{index}"] = self._to_map(tokens, grid)
        features["last"] = self._to_map(tokens, grid)
        return features

    def forward_pooled(self, images: torch.Tensor) -> torch.Tensor:
        """The class token after the final norm, or (``global_pool="avg"``) the final norm of the
        mean patch token."""
        tokens, _ = self._input_tokens(images)
        tokens = self.blocks(tokens)
        if self.global_pool == "token":
            return self.norm(tokens[:, 0])
        return self.norm(tokens[:, self.num_prefix_tokens:].mean(dim=1))

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.forward_features(images)
