"""Feature Pyramid Network (Lin et al., 2017, section 3).

Each chosen backbone output gets a 1x1 lateral convolution to ``out_channels``; from the coarsest
level down, the running map is upsampled 2x (nearest) and added to the next lateral; a 3x3
convolution then smooths each merged map. P6 is a stride-2 subsampling of P5 (a 1x1 max-pool, as
used for the RPN's 512-pixel anchors in the Mask R-CNN implementations), or, for RetinaNet and
FCOS (``top_block="p6p7"``), P6 and P7 are stride-2 3x3 convolutions of P5 and of ReLU(P6)
(torchvision's ``LastLevelP6P7`` on P5, FCOS section 3.2). With a norm (GN, SyncBN)
every conv drops its bias and is followed by the norm, as in the GN paper's detection models.
``output_convs`` > 1 stacks more 3x3 convolutions (with ReLU between) on each output, a heavier
neck for detection on a frozen backbone. ``conv="adder"`` makes every convolution an adder layer
followed by the norm (the adder FPN of Adder FCOS). ``in_norm`` normalises each backbone map before its
lateral convolution: the per-level LayerNorm that MViTv2's and ConvNeXt's detectors put on their
trunk outputs (detectron2's ``scale{k}_norm``, ConvNeXt's ``norm{i}``).
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from vislab.layers import get_norm
from vislab.layers.adder import ADDER_KINDS, adder_conv
from vislab.models.shape_spec import ShapeSpec


TOP_BLOCKS = ("none", "maxpool", "p6p7")


def conv_norm(w_in: int, w_out: int, k: int, *, norm: str, stride: int = 1, conv: str = "conv") -> nn.Module:
    """A convolution ('same' padding; a bias only without a norm) and its norm; ``conv="adder"``
    (or another key of ``ADDER_KINDS``) makes it an adder layer (AdderNet), which always needs the
    norm after it."""
    if conv in ADDER_KINDS:
        return nn.Sequential(adder_conv(conv, w_in, w_out, k, stride=stride),
                             get_norm(norm, w_out))
    layer = nn.Conv2d(w_in, w_out, k, stride=stride, padding=k // 2, bias=norm == "none")
    nn.init.kaiming_uniform_(layer.weight, a=1)
    if layer.bias is not None:
        nn.init.zeros_(layer.bias)
    if norm == "none":
        return layer
    return nn.Sequential(layer, get_norm(norm, w_out))


def _output_block(channels: int, *, norm: str, num_convs: int, conv: str) -> nn.Module:
    layers: list[nn.Module] = []
    for index in range(num_convs):
        if index:
            layers.append(nn.ReLU(inplace=True))
        layers.append(conv_norm(channels, channels, 3, norm=norm, conv=conv))
    return layers[0] if num_convs == 1 else nn.Sequential(*layers)


class FPN(nn.Module):
    """Outputs ``p2``..``p6`` (named by log2 of their stride) from the backbone outputs
    ``in_features`` (finest first), e.g. ResNet's ``res2``..``res5``."""

    def __init__(self, *, input_shapes: dict[str, ShapeSpec], in_features: Sequence[str],
                 out_channels: int = 256, norm: str = "none", top_block: str = "maxpool", output_convs: int = 1,
                 in_norm: str = "none", conv: str = "conv"):
        super().__init__()
        missing = [name for name in in_features if name not in input_shapes]
        if missing:
            raise ValueError(f"FPN in_features {missing} are not backbone outputs; it has {sorted(input_shapes)}")
        self.in_features = tuple(in_features)
        self.input_norms = (nn.ModuleList(get_norm(in_norm, input_shapes[n].channels) for n in in_features)
                            if in_norm != "none" else None)
        if conv in ADDER_KINDS and norm == "none":
            raise ValueError("an adder FPN needs a norm after its adder layers (norm=BN, SyncBN or GN)")
        self.lateral = nn.ModuleList(
            conv_norm(input_shapes[n].channels, out_channels, 1, norm=norm, conv=conv) for n in in_features)
        self.output = nn.ModuleList(_output_block(out_channels, norm=norm, num_convs=output_convs, conv=conv)
                                    for _ in in_features)
        strides = [input_shapes[n].stride for n in in_features]
        if top_block not in TOP_BLOCKS:
            raise ValueError(f"FPN top_block={top_block!r} is not one of {', '.join(TOP_BLOCKS)}")
        self.top_block = top_block
        extra_levels = {"none": 0, "maxpool": 1, "p6p7": 2}[top_block]
        strides += [strides[-1] * 2**i for i in range(1, extra_levels + 1)]
        if top_block == "p6p7":
            self.top = nn.ModuleDict({name: conv_norm(out_channels, out_channels, 3, stride=2, conv=conv,
                                                      norm=norm if conv in ADDER_KINDS else "none")
                                      for name in ("p6", "p7")})
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
        if self.top_block == "maxpool":
            outputs.append(F.max_pool2d(outputs[-1], kernel_size=1, stride=2))
        elif self.top_block == "p6p7":
            p6 = self.top["p6"](outputs[-1])
            outputs += [p6, self.top["p7"](F.relu(p6))]
        return dict(zip(self._shapes, outputs))
