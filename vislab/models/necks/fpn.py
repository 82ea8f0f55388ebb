"""Feature Pyramid Network (Lin et al., 2017, section 3).

Each chosen backbone output gets a 1x1 lateral convolution to ``out_channels``; from the coarsest
level down, the running map is upsampled 2x (nearest) and added to the next lateral; a 3x3
convolution then smooths each merged map. P6 is a stride-2 subsampling of P5 (a 1x1 max-pool, as
used for the RPN's 512-pixel anchors in the Mask R-CNN implementations). With a norm (GN, SyncBN)
every conv drops its bias and is followed by the norm, as in the GN paper's detection models.
``output_convs`` > 1 stacks more 3x3 convolutions (with ReLU between) on each output, a heavier
neck for detection on a frozen backbone. ``in_norm`` normalises each backbone map before its
lateral convolution: the per-level LayerNorm that MViTv2's and ConvNeXt's detectors put on their
trunk outputs (detectron2's ``scale{k}_norm``, ConvNeXt's ``norm{i}``).
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from vislab.layers import get_norm
from vislab.models.shape_spec import ShapeSpec


def _conv_norm(w_in: int, w_out: int, k: int, *, norm: str) -> nn.Module:
    conv = nn.Conv2d(w_in, w_out, k, padding=k // 2, bias=norm == "none")
    nn.init.kaiming_uniform_(conv.weight, a=1)
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)
    if norm == "none":
        return conv
    return nn.Sequential(conv, get_norm(norm, w_out))


def _output_block(channels: int, *, norm: str, num_convs: int) -> nn.Module:
    layers: list[nn.Module] = []
    for index in range(num_convs):
        if index:
            layers.append(nn.ReLU(inplace=True))
        layers.append(_conv_norm(channels, channels, 3, norm=norm))
    return layers[0] if num_convs == 1 else nn.Sequential(*layers)


class FPN(nn.Module):
    """Outputs ``p2``..``p6`` (named by log2 of their stride) from the backbone outputs
    ``in_features`` (finest first), e.g. ResNet's ``res2``..``res5``."""

    def __init__(self, *, input_shapes: dict[str, ShapeSpec], in_features: Sequence[str],
                 out_channels: int = 256, norm: str = "none", top_block: bool = True, output_convs: int = 1,
                 in_norm: str = "none"):
        super().__init__()
        missing = [name for name in in_features if name not in input_shapes]
        if missing:
            raise ValueError(f"FPN in_features {missing} are not backbone outputs; it has {sorted(input_shapes)}")
        self.in_features = tuple(in_features)
        self.input_norms = (nn.ModuleList(get_norm(in_norm, input_shapes[n].channels) for n in in_features)
                            if in_norm != "none" else None)
        self.lateral = nn.ModuleList(
            _conv_norm(input_shapes[n].channels, out_channels, 1, norm=norm) for n in in_features)
        self.output = nn.ModuleList(_output_block(out_channels, norm=norm, num_convs=output_convs)
                                    for _ in in_features)
        strides = [input_shapes[n].stride for n in in_features]
        self.top_block = top_block
        if top_block:
            strides.append(strides[-1] * 2)
        self._shapes = {f"p{s.bit_length() - 1}": ShapeSpec(channels=out_channels, stride=s) for s in strides}

    def output_shape(self) -> dict[str, ShapeSpec]:
        return dict(self._shapes)

    def forward(self, features: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        inputs = [features[name] for name in self.in_features]
        if self.input_norms is not None:
            inputs = [norm(x) for norm, x in zip(self.input_norms, inputs)]
        merged = self.lateral[-1](inputs[-1])
        outputs = [self.output[-1](merged)]
        for level in range(len(inputs) - 2, -1, -1):
            top_down = F.interpolate(merged, size=inputs[level].shape[-2:], mode="nearest")
            merged = self.lateral[level](inputs[level]) + top_down
            outputs.insert(0, self.output[level](merged))
        if self.top_block:
            outputs.append(F.max_pool2d(outputs[-1], kernel_size=1, stride=2))
        return dict(zip(self._shapes, outputs))
