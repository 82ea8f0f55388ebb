"""ViTDet's simple feature pyramid (Li et al., 2022, section 3, figure 2 right): the pyramid is
built from the last map of a plain ViT alone, with no top-down or lateral connections.

Scale 4 is two 2x2 stride-2 transposed convolutions with a norm and GELU between them, scale 2
one transposed convolution, scale 1 the map itself and scale 1/2 (1/4) a 2x2 (4x4) max-pool (1/4
serves a patch-8 trunk, whose pyramid then starts at stride 4 with scale 2); each then goes
through a 1x1 convolution to ``out_channels`` and a 3x3 convolution, each followed by the norm
(channels-first LayerNorm in the paper; the convolutions then carry no bias). P6 is a stride-2
subsampling of P5, as the FPN's (``LastLevelMaxPool``).
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from vislab.layers import get_norm
from vislab.models.shape_spec import ShapeSpec

SCALES = (4.0, 2.0, 1.0, 0.5)  # ViTDet's, for a stride-16 map
ALL_SCALES = SCALES + (0.25,)


def resample_by_scale(channels: int, scale: float, *, norm: str, halve_width: bool = True) -> tuple[nn.Module, int]:
    """The module that brings a map to ``scale`` times its resolution, and its output width: two
    2x2 stride-2 transposed convolutions with ``norm`` and GELU between them (scale 4), one
    (scale 2), the identity (1) or a max-pool (1/2, 1/4). ``halve_width``: each transposed
    convolution halves the channels (ViTDet); else they keep the width (Li et al., 2021)."""
    if scale not in ALL_SCALES:
        raise ValueError(f"pyramid scale {scale} is not one of {ALL_SCALES}")
    if scale == 4.0:
        mid, out = (channels // 2, channels // 4) if halve_width else (channels, channels)
        return nn.Sequential(nn.ConvTranspose2d(channels, mid, 2, stride=2), get_norm(norm, mid),
                             nn.GELU(), nn.ConvTranspose2d(mid, out, 2, stride=2)), out
    if scale == 2.0:
        out = channels // 2 if halve_width else channels
        return nn.ConvTranspose2d(channels, out, 2, stride=2), out
    if scale == 1.0:
        return nn.Identity(), channels
    return nn.MaxPool2d(round(1 / scale), stride=round(1 / scale)), channels


def _conv_norm(w_in: int, w_out: int, kernel: int, *, norm: str) -> nn.Sequential:
    """A convolution (PyTorch's default initialisation, as detectron2 leaves it here) and its norm."""
    conv = nn.Conv2d(w_in, w_out, kernel, padding=kernel // 2, bias=norm == "none")
    return nn.Sequential(conv, get_norm(norm, w_out))


class SimpleFeaturePyramid(nn.Module):
    """``p{k}`` maps (named by log2 of their stride) of ``out_channels`` from the backbone output
    ``in_feature`` at each of ``scales``, plus ``p{k+1}`` by max-pooling the coarsest (``top_block``).

    Each level is ``levels[name]``: ``resample`` (transposed convolutions, identity or pool),
    ``lateral`` (1x1 conv + norm) and ``output`` (3x3 conv + norm).
    """

    def __init__(self, *, input_shapes: dict[str, ShapeSpec], in_feature: str = "last", out_channels: int = 256,
                 scales: Sequence[float] = SCALES, norm: str = "LN", top_block: bool = True):
        super().__init__()
        if in_feature not in input_shapes:
            raise ValueError(f"simple pyramid in_feature {in_feature!r} is not a backbone output; "
                             f"it has {sorted(input_shapes)}")
        self.in_feature = in_feature
        channels, stride = input_shapes[in_feature].channels, input_shapes[in_feature].stride
        self.levels = nn.ModuleDict()
        self._shapes: dict[str, ShapeSpec] = {}
        for scale in sorted(scales, reverse=True):
            level_stride = int(stride / scale)
            resample, width = resample_by_scale(channels, scale, norm=norm)
            name = f"p{int(math.log2(level_stride))}"
            self.levels[name] = nn.ModuleDict({
                "resample": resample,
                "lateral": _conv_norm(width, out_channels, 1, norm=norm),
                "output": _conv_norm(out_channels, out_channels, 3, norm=norm),
            })
            self._shapes[name] = ShapeSpec(channels=out_channels, stride=level_stride)
        self.top_block = top_block
        if top_block:
            coarsest = max(spec.stride for spec in self._shapes.values())
            self._shapes[f"p{int(math.log2(coarsest)) + 1}"] = ShapeSpec(channels=out_channels, stride=coarsest * 2)

    def output_shape(self) -> dict[str, ShapeSpec]:
        return dict(self._shapes)

    def forward(self, features: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        x = features[self.in_feature]
        outputs = [level["output"](level["lateral"](level["resample"](x))) for level in self.levels.values()]
        if self.top_block:
            outputs.append(F.max_pool2d(outputs[-1], kernel_size=1, stride=2))
        return dict(zip(self._shapes, outputs))
