"""Registry entries for ConvNeXt image classifiers (the official repository's ImageNet-1k models)."""
from __future__ import annotations

from functools import partial
from typing import Sequence

import torch
from torch import nn

from vislab.models.backbones.convnext import ConvNeXt
from vislab.models.classifier import ImageClassifier
from vislab.models.registry_types import imagenet_classifier_entry


def convnext_classifier(*, num_classes: int, depths: Sequence[int] = (3, 3, 9, 3),
                        dims: Sequence[int] = (96, 192, 384, 768), kernel_size: int = 7,
                        mlp_ratio: float = 4.0, drop_path_rate: float = 0.0,
                        layer_scale_init: float | None = 1e-6, head_init_scale: float = 1.0,
                        in_chans: int = 3, final_norm: bool = True, dropout: float = 0.0,
                        zero_init_head: bool = False) -> ImageClassifier:
    """A ConvNeXt trunk (see ``ConvNeXt``) with a linear classifier on its pooled, normed features.

    The classifier starts as in the official code: truncated normal weights (std 0.02) times
    ``head_init_scale`` and zero biases; the official fine-tuning recipes (its TRAINING.md)
    use ``head_init_scale=0.001``.
    """
    backbone = ConvNeXt(depths=depths, dims=dims, kernel_size=kernel_size, mlp_ratio=mlp_ratio,
                        drop_path_rate=drop_path_rate, layer_scale_init=layer_scale_init,
                        in_chans=in_chans, final_norm=final_norm)
    return ImageClassifier(backbone, num_classes=num_classes, dropout=dropout,
                           head_init=partial(_init_head, scale=head_init_scale), zero_init_head=zero_init_head)


@torch.no_grad()
def _init_head(fc: nn.Linear, *, scale: float) -> None:
    nn.init.trunc_normal_(fc.weight, std=0.02)
    nn.init.zeros_(fc.bias)
    fc.weight.mul_(scale)


_entry = partial(imagenet_classifier_entry, family="convnext", builder=convnext_classifier,
                 source="facebookresearch/ConvNeXt README; params as timm")


ENTRIES = (
    _entry("convnext_tiny", top1=82.1, params=28_589_128, gmacs=4.5, depths=(3, 3, 9, 3), dims=(96, 192, 384, 768)),
    _entry("convnext_small", top1=83.1, params=50_223_688, gmacs=8.7, depths=(3, 3, 27, 3), dims=(96, 192, 384, 768)),
    _entry("convnext_base", top1=83.8, params=88_591_464, gmacs=15.4, depths=(3, 3, 27, 3), dims=(128, 256, 512, 1024)),
    _entry("convnext_large", top1=84.3, params=197_767_336, gmacs=34.4, depths=(3, 3, 27, 3),
           dims=(192, 384, 768, 1536)),
)
