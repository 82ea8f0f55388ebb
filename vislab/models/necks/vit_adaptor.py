"""The multi-scale adaptor of Li et al. (2021), "Benchmarking Detection Transfer Learning with
Vision Transformers", section 2.1: four intermediate maps of a plain ViT (the outputs of blocks
d/4, d/2, 3d/4 and d; 0-based 2, 5, 8, 11 for ViT-B) are resampled to strides 4, 8, 16 and 32 and
feed a standard FPN.

Stride 4: two 2x2 stride-2 transposed convolutions with a norm (GroupNorm in the paper's code)
and GELU between them; stride 8: one transposed convolution; stride 16: the map itself; stride
32: a 2x2 max-pool. Every resampled map keeps the ViT's width; the FPN brings them to
``out_channels`` (with BatchNorm in the paper).
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from vislab.models.necks.fpn import FPN
from vislab.models.necks.simple_pyramid import SCALES, resample_by_scale
from vislab.models.shape_spec import ShapeSpec


def quarter_blocks(depth: int) -> tuple[int, ...]:
    """The 0-based indices of blocks d/4, d/2, 3d/4 and d of a depth-``depth`` ViT."""
    return tuple(depth * q // 4 - 1 for q in (1, 2, 3, 4))


class ViTAdaptorFPN(nn.Module):
    """``resamplers[name]`` brings each of ``in_features`` (finest target first) to strides 4, 8,
    16, 32; ``fpn`` gives ``p2``..``p6`` from them."""

    def __init__(self, *, input_shapes: dict[str, ShapeSpec], in_features: Sequence[str], out_channels: int = 256,
                 adaptor_norm: str = "GN", fpn_norm: str = "none"):
        super().__init__()
        if len(in_features) != len(SCALES):
            raise ValueError(f"the multi-scale adaptor reads {len(SCALES)} ViT maps, got {list(in_features)}")
        missing = [name for name in in_features if name not in input_shapes]
        if missing:
            raise ValueError(f"adaptor in_features {missing} are not backbone outputs; it has {sorted(input_shapes)}")
        self.in_features = tuple(in_features)
        self.resamplers = nn.ModuleDict()
        adapted: dict[str, ShapeSpec] = {}
        for name, scale in zip(in_features, SCALES):
            spec = input_shapes[name]
            self.resamplers[name], width = resample_by_scale(spec.channels, scale, norm=adaptor_norm,
                                                             halve_width=False)
            adapted[name] = ShapeSpec(channels=width, stride=int(spec.stride / scale))
        self.fpn = FPN(input_shapes=adapted, in_features=in_features, out_channels=out_channels, norm=fpn_norm)

    def output_shape(self) -> dict[str, ShapeSpec]:
        return self.fpn.output_shape()

    def forward(self, features: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return self.fpn({name: self.resamplers[name](features[name]) for name in self.in_features})
