"""Registry entries for MViTv2 image classifiers (the official ImageNet-1k models, as in timm)."""
from __future__ import annotations

from functools import partial
from typing import Sequence

from vislab.models.backbones.mvit_trunk import init_weights
from vislab.models.backbones.mvitv2 import MViTv2
from vislab.models.classifier import ImageClassifier
from vislab.models.registry_types import imagenet_classifier_entry


def mvitv2_classifier(*, num_classes: int, depths: Sequence[int], embed_dim: int = 96,
                      num_heads: int = 1, pool_kernel: int = 3, kv_stride: int = 4,
                      dim_mul_in_att: bool = True, residual_pooling: bool = True,
                      rel_pos: bool = True, mlp_ratio: float = 4.0, drop_path_rate: float = 0.0,
                      img_size: int = 224, in_chans: int = 3, window_size: int = 0, final_norm: bool = True,
                      dropout: float = 0.0,
                      zero_init_head: bool = False) -> ImageClassifier:
    """An MViTv2 trunk (see ``MViTv2``) with a linear classifier on its normed, pooled tokens;
    the classifier starts like every other linear layer (truncated normal, std 0.02)."""
    backbone = MViTv2(depths=depths, embed_dim=embed_dim, num_heads=num_heads,
                      pool_kernel=pool_kernel, kv_stride=kv_stride, dim_mul_in_att=dim_mul_in_att,
                      residual_pooling=residual_pooling, rel_pos=rel_pos, mlp_ratio=mlp_ratio,
                      drop_path_rate=drop_path_rate, img_size=img_size, in_chans=in_chans,
                      window_size=window_size, final_norm=final_norm)
    return ImageClassifier(backbone, num_classes=num_classes, dropout=dropout, head_init=init_weights,
                           zero_init_head=zero_init_head)


_entry = partial(imagenet_classifier_entry, family="mvitv2", builder=mvitv2_classifier,
                 source="facebookresearch/mvit README and MViTv2 paper; params as timm")


ENTRIES = (
    _entry("mvitv2_tiny", top1=82.3, params=24_173_320, gmacs=4.7, depths=(1, 2, 5, 2)),
    _entry("mvitv2_small", top1=83.6, params=34_870_216, gmacs=7.0, depths=(1, 2, 11, 2)),
    _entry("mvitv2_base", top1=84.4, params=51_472_744, gmacs=10.2, depths=(2, 3, 16, 3)),
    _entry("mvitv2_large", top1=85.3, params=217_992_952, gmacs=42.1, depths=(2, 6, 36, 4), embed_dim=144,
           num_heads=2, dim_mul_in_att=False),
)
