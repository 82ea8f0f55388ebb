"""Vision Transformer (Dosovitskiy et al., 2021), with the options of DeiT, CaiT and MAE.

The image is cut into ``patch_size`` squares, each linearly embedded; a class token is prepended,
position embeddings are added and pre-norm transformer blocks follow (ViT section 3.1, eqs. 1-4).
The layout, LayerNorm eps 1e-6 and initialisation are timm's ``VisionTransformer`` (DeiT's code),
so timm/DeiT weights convert by renaming keys. The pieces an MAE encoder needs to run the blocks
on a subset of the tokens are separate methods: ``embed_patches``, ``add_position``,
``prepend_class_token`` and the ``blocks`` stack.

The same trunk is ViTDet's plain backbone (Li et al., 2022, "Exploring Plain Vision Transformer
Backbones for Object Detection", section 3): window attention in most blocks and global attention
in a few (``window_size``, ``global_blocks``), decomposed relative positions (``rel_pos``),
optional residual convolution blocks (``residual_blocks``), no class token and no final norm,
with the position table of the 224-pixel pre-training grid (``pretrain_img_size``,
``pretrain_class_token``) resized to each input as detectron2's ``get_abs_pos`` does.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from vislab.layers import DropPath, LayerNorm2d, Mlp, drop_path_rates
from vislab.layers.attention import MultiHeadSelfAttention
from vislab.layers.pos_embed import resize_grid_position_embedding, sincos_2d_position_embedding
from vislab.layers.windows import window_partition, window_unpartition
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


class ResidualConvBlock(nn.Module):
    """ViTDet's optional propagation block after a transformer block (section 4.2, "residual"):
    1x1 conv to half the width, 3x3 conv, 1x1 conv back, each followed by a channels-first
    LayerNorm (GELU after the first two), added to the input. The last norm starts at zero, so
    the block starts as the identity; the convolutions have MSRA fill (detectron2's layout)."""

    def __init__(self, dim: int):
        super().__init__()
        hidden = dim // 2
        self.conv1 = nn.Conv2d(dim, hidden, 1, bias=False)
        self.norm1 = LayerNorm2d(hidden, eps=LAYER_NORM_EPS)
        self.act1 = nn.GELU()
        self.conv2 = nn.Conv2d(hidden, hidden, 3, padding=1, bias=False)
        self.norm2 = LayerNorm2d(hidden, eps=LAYER_NORM_EPS)
        self.act2 = nn.GELU()
        self.conv3 = nn.Conv2d(hidden, dim, 1, bias=False)
        self.norm3 = LayerNorm2d(dim, eps=LAYER_NORM_EPS)
        for conv in (self.conv1, self.conv2, self.conv3):
            nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
        nn.init.zeros_(self.norm3.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act1(self.norm1(self.conv1(x)))
        out = self.act2(self.norm2(self.conv2(out)))
        return x + self.norm3(self.conv3(out))


class TransformerBlock(nn.Module):
    """Pre-norm block (ViT eqs. 2-3): ``x + attn(LN(x))`` then ``x + mlp(LN(x))``, each branch
    optionally scaled by LayerScale and dropped per sample by stochastic depth.

    With ``window_size`` the attention runs inside non-overlapping windows of the token grid
    (the normalised tokens padded at the bottom and right, as in detectron2); ``rel_pos_grid``
    adds decomposed relative positions with tables for that grid (the window, or the whole
    grid); ``residual_conv`` appends ViTDet's residual convolution block. These need the token
    grid, passed to ``forward``.
    """

    def __init__(self, dim: int, *, num_heads: int, mlp_ratio: float, qkv_bias: bool,
                 layer_scale_init: float | None, drop_path: float, window_size: int = 0,
                 rel_pos_grid: Sequence[int] | None = None, residual_conv: bool = False):
        super().__init__()
        self.window_size = window_size
        self.norm1 = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.attn = MultiHeadSelfAttention(dim, num_heads=num_heads, qkv_bias=qkv_bias, rel_pos_grid=rel_pos_grid)
        self.layer_scale1 = _layer_scale(dim, layer_scale_init)
        self.norm2 = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.layer_scale2 = _layer_scale(dim, layer_scale_init)
        self.drop_path = DropPath(drop_path)
        self.residual = ResidualConvBlock(dim) if residual_conv else None

    def forward(self, x: torch.Tensor, grid: tuple[int, int] | None = None) -> torch.Tensor:
        """``x`` is ``(N, L, C)``; ``grid`` the ``(h, w)`` layout of its tokens, needed with
        windows, relative positions or the residual block."""
        x = x + self.drop_path(self.layer_scale1(self._attend(self.norm1(x), grid)))
        x = x + self.drop_path(self.layer_scale2(self.mlp(self.norm2(x))))
        if self.residual is not None:
            batch, _, channels = x.shape
            as_map = x.transpose(1, 2).reshape(batch, channels, *grid)
            x = self.residual(as_map).flatten(2).transpose(1, 2)
        return x

    def _attend(self, x: torch.Tensor, grid: tuple[int, int] | None) -> torch.Tensor:
        if not self.window_size:
            return self.attn(x, grid)
        batch, _, channels = x.shape
        windows, padded = window_partition(x.view(batch, *grid, channels), self.window_size)
        attended = self.attn(windows.flatten(1, 2), (self.window_size, self.window_size))
        attended = window_unpartition(attended.view_as(windows), self.window_size, padded=padded, size=grid)
        return attended.reshape(batch, -1, channels)


def _layer_scale(dim: int, init_value: float | None) -> nn.Module:
    return nn.Identity() if init_value is None else LayerScale(dim, init_value=init_value)


class VisionTransformer(nn.Module):
    """A plain ViT trunk; ``forward_features`` returns the stride-``patch_size`` map ``last``
    (the last block's patch tokens, before the final norm) and ``block{i}`` for each index in
    ``out_blocks`` (0-based), the intermediate maps Li et al. (2021) read.

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
        img_size: the input side (or (height, width)) the model is built for: the position
            table's grid (unless ``pretrain_img_size`` is set) and the global blocks'
            relative-position tables; other inputs resample them.
        window_size: attention inside windows of this many tokens a side in every block but the
            ``global_blocks`` (ViTDet: 14 at 1024 input); 0 attends globally everywhere.
        global_blocks: block indices that keep global attention (ViT-B: 2, 5, 8, 11).
        rel_pos: decomposed relative positions in every block, zero-initialised (ViTDet).
        residual_blocks: blocks followed by a residual convolution block (ViTDet section 4.2).
        final_norm: the LayerNorm after the last block (a detection trunk has none).
        pretrain_img_size: the side of the position table's grid when it differs from
            ``img_size`` (ViTDet keeps the 224-pixel pre-training table and resizes it).
        pretrain_class_token: the position table keeps a class-token slot although this trunk
            has no class token (ViTDet's ``pretrain_use_cls_token``), so pre-trained tables load.
        pos_resize_antialias: resize the position table with antialiasing, as timm does; False
            is detectron2's ``get_abs_pos`` (plain bicubic).
    """

    def __init__(self, *, patch_size: int = 16, embed_dim: int = 768, depth: int = 12,
                 num_heads: int = 12, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 class_token: bool = True, global_pool: str = "token", pos_embed: str = "learned",
                 layer_scale_init: float | None = None, drop_path_rate: float = 0.0,
                 img_size: int | Sequence[int] = 224, out_blocks: Sequence[int] = (),
                 in_chans: int = 3, window_size: int = 0, global_blocks: Sequence[int] = (),
                 rel_pos: bool = False, residual_blocks: Sequence[int] = (), final_norm: bool = True,
                 pretrain_img_size: int | None = None, pretrain_class_token: bool = False,
                 pos_resize_antialias: bool = True):
        super().__init__()
        if global_pool not in GLOBAL_POOLS:
            raise ValueError(f"unknown global_pool {global_pool!r}; choose one of {', '.join(GLOBAL_POOLS)}")
        if global_pool == "token" and not class_token:
            raise ValueError("global_pool='token' needs class_token=True; use global_pool='avg'")
        if pos_embed not in POSITION_EMBEDDINGS:
            raise ValueError(f"unknown pos_embed {pos_embed!r}; choose one of {', '.join(POSITION_EMBEDDINGS)}")
        for option, blocks in (("out_blocks", out_blocks), ("global_blocks", global_blocks),
                               ("residual_blocks", residual_blocks)):
            bad_blocks = [i for i in blocks if not 0 <= i < depth]
            if bad_blocks:
                raise ValueError(f"{option} {bad_blocks} are not block indices of a depth-{depth} ViT (0..{depth - 1})")
        if (window_size or rel_pos) and class_token:
            raise ValueError("window attention and relative positions work on the token grid: set class_token=False")
        height, width = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        self._check_input_size(height, width, patch_size=patch_size)
        table_side = (height, width) if pretrain_img_size is None else (pretrain_img_size, pretrain_img_size)

        self.patch_size = patch_size
        self.embed_dim = self.num_features = embed_dim
        self.global_pool = global_pool
        self.grid_size = (table_side[0] // patch_size, table_side[1] // patch_size)
        self.num_prefix_tokens = 1 if class_token else 0
        self.num_table_prefix = 1 if class_token or pretrain_class_token else 0
        self.pos_resize_antialias = pos_resize_antialias
        self.out_blocks = tuple(sorted(set(out_blocks)))

        self.patch_embed = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim)) if class_token else None
        num_positions = self.num_table_prefix + self.grid_size[0] * self.grid_size[1]
        if pos_embed == "learned":
            self.pos_embed = nn.Parameter(torch.zeros(1, num_positions, embed_dim))
        else:
            grid = sincos_2d_position_embedding(embed_dim=embed_dim, grid_size=self.grid_size)
            prefix = torch.zeros(self.num_table_prefix, embed_dim)
            self.register_buffer("pos_embed", torch.cat([prefix, grid])[None])
        rates = drop_path_rates(drop_path_rate, depth)
        full_grid = (height // patch_size, width // patch_size)
        windowed = [bool(window_size) and i not in global_blocks for i in range(depth)]
        self.blocks = nn.Sequential(*[
            TransformerBlock(embed_dim, num_heads=num_heads, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias,
                             layer_scale_init=layer_scale_init, drop_path=rates[i],
                             window_size=window_size if windowed[i] else 0,
                             rel_pos_grid=((window_size, window_size) if windowed[i] else full_grid) if rel_pos else None,
                             residual_conv=i in residual_blocks)
            for i in range(depth)
        ])
        self.norm = nn.LayerNorm(embed_dim, eps=LAYER_NORM_EPS) if final_norm else nn.Identity()
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
        ``i``; ``num_lr_layers`` for the final norm and the residual convolution blocks (BEiT's
        ``get_num_layer_for_vit``; ViTDet's ``get_vit_lr_decay_rate``)."""
        if name.startswith("blocks.") and ".residual." not in name:
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

    def adapt_pretrained(self, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Fit the weights of another ViT of this width and depth (a classifier's, MAE's or MoCo
        v3's encoder, in vislab's layout) to this trunk, as detectron2's checkpoint heuristics
        do for ViTDet: the class token is dropped where this trunk has none (the final norm is
        left out by ``load_backbone_weights``), the position table is resized bicubically to this
        trunk's grid (its class slot kept or dropped), a patch embedding of another patch size is
        resampled to this one, and relative-position and residual-block weights the source lacks
        keep their initialisation."""
        own = self.state_dict()
        adapted = {k: v for k, v in state_dict.items() if k != "cls_token" or self.cls_token is not None}
        table = adapted.get("pos_embed")
        if table is not None and table.shape != own["pos_embed"].shape:
            source_grid = _square_grid(table.shape[1], name="pos_embed")
            source_prefix = table.shape[1] - source_grid * source_grid
            table = resize_grid_position_embedding(table, old_grid=(source_grid, source_grid),
                                                   new_grid=self.grid_size, num_prefix_tokens=source_prefix,
                                                   antialias=self.pos_resize_antialias)
            adapted["pos_embed"] = table[:, source_prefix - self.num_table_prefix:] if source_prefix else table
        kernel = adapted.get("patch_embed.weight")
        if kernel is not None and kernel.shape[-2:] != own["patch_embed.weight"].shape[-2:]:
            # a ViT-H/14 for a patch-16 trunk (detectron2's "p14to16" MAE weights): the kernel
            # resampled bicubically
            adapted["patch_embed.weight"] = F.interpolate(kernel.float(), size=tuple(own["patch_embed.weight"].shape[-2:]),
                                                          mode="bicubic", align_corners=False).to(kernel.dtype)
        for key, value in own.items():
            if key not in adapted and (".rel_pos_" in key or ".residual." in key):
                adapted[key] = value
        return adapted

    def embed_patches(self, images: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """``(N, h * w, C)`` patch tokens in row-major order and their grid ``(h, w)``."""
        self._check_input_size(images.shape[-2], images.shape[-1], patch_size=self.patch_size)
        patches = self.patch_embed(images)
        return patches.flatten(2).transpose(1, 2), (patches.shape[-2], patches.shape[-1])

    def add_position(self, tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """Add the position embedding of a ``grid`` of patch tokens (no class token), resampled
        from the built grid when ``grid`` differs."""
        pos_embed = resize_grid_position_embedding(self.pos_embed, old_grid=self.grid_size, new_grid=grid,
                                                   num_prefix_tokens=self.num_table_prefix,
                                                   antialias=self.pos_resize_antialias)
        return tokens + pos_embed[:, self.num_table_prefix:]

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
            tokens = block(tokens, grid)
            if index in self.out_blocks:
                features[f"block{index}"] = self._to_map(tokens, grid)
        features["last"] = self._to_map(tokens, grid)
        return features

    def forward_pooled(self, images: torch.Tensor) -> torch.Tensor:
        """The class token after the final norm, or (``global_pool="avg"``) the final norm of the
        mean patch token."""
        tokens, grid = self._input_tokens(images)
        for block in self.blocks:
            tokens = block(tokens, grid)
        if self.global_pool == "token":
            return self.norm(tokens[:, 0])
        return self.norm(tokens[:, self.num_prefix_tokens:].mean(dim=1))

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.forward_features(images)


def _square_grid(length: int, *, name: str) -> int:
    """The side of the square grid in a table of ``length`` rows (with 0 or 1 class slots)."""
    for prefix in (0, 1):
        side = round((length - prefix) ** 0.5)
        if side * side == length - prefix:
            return side
    raise ValueError(f"{name} has {length} rows: not a square grid with or without a class slot")
