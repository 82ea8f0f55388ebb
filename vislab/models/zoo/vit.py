"""Registry entries for Vision Transformer image classifiers (timm's reference counts)."""
from __future__ import annotations

from functools import partial
from typing import Sequence

from vislab.layers.invariance import invariant_linears
from vislab.models.backbones.vit import VisionTransformer
from vislab.models.classifier import ImageClassifier
from vislab.models.registry_types import imagenet_classifier_entry


def vit_classifier(*, num_classes: int, patch_size: int, embed_dim: int, depth: int, num_heads: int,
                   mlp_ratio: float = 4.0, qkv_bias: bool = True, class_token: bool = True,
                   global_pool: str = "token", pos_embed: str = "learned",
                   layer_scale_init: float | None = None, drop_path_rate: float = 0.0,
                   img_size: int | Sequence[int] = 224, out_blocks: Sequence[int] = (),
                   in_chans: int = 3, dropout: float = 0.0, zero_init_head: bool = False,
                   linear: str = "linear") -> ImageClassifier:
    """A ViT trunk (see ``VisionTransformer``) with a linear classifier on its pooled vector;
    ``linear="ift"`` gives the blocks' projections the invariance feature transform (Ye et al., 2021)."""
    if linear not in ("linear", "ift"):
        raise ValueError(f"linear must be 'linear' or 'ift', got {linear!r}")
    backbone = VisionTransformer(patch_size=patch_size, embed_dim=embed_dim, depth=depth,
                                 num_heads=num_heads, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias,
                                 class_token=class_token, global_pool=global_pool, pos_embed=pos_embed,
                                 layer_scale_init=layer_scale_init, drop_path_rate=drop_path_rate,
                                 img_size=img_size, out_blocks=out_blocks, in_chans=in_chans)
    if linear == "ift":
        invariant_linears(backbone.blocks)
    return ImageClassifier(backbone, num_classes=num_classes, dropout=dropout, zero_init_head=zero_init_head)


_entry = partial(imagenet_classifier_entry, family="vit", builder=vit_classifier)


ENTRIES = (
    _entry("vit_s16", top1=79.8, source="timm vit_small_patch16_224", params=22_050_664, gmacs=4.6,
           patch_size=16, embed_dim=384, depth=12, num_heads=6),
    _entry("vit_b16", top1=81.8, source="timm vit_base_patch16_224", params=86_567_656, gmacs=17.56,
           patch_size=16, embed_dim=768, depth=12, num_heads=12),
    _entry("vit_l16", source="timm vit_large_patch16_224", params=304_326_632, gmacs=61.56,
           patch_size=16, embed_dim=1024, depth=24, num_heads=16),
    _entry("vit_h14", source="timm vit_huge_patch14_224", params=632_045_800, gmacs=167.3,
           patch_size=14, embed_dim=1280, depth=32, num_heads=16),
)
