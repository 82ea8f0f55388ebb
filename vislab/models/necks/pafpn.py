"""The reversed path-aggregation FPN of Adder FCOS, "R-PAFPN" (Chen et al., 2021, "An Empirical
Study of Adder Neural Networks for Object Detection", section 2.2).

PAFPN (Liu et al., 2018) adds a bottom-up path after the FPN's top-down one; R-PAFPN reverses the
order, bottom-up first, so the fine levels' detail reaches the coarse ones before the top-down
path brings context back down, and it puts a shortcut around every 3x3 layer, which is what lets
adder necks train (the paper's ablation: FPN 34.8, PAFPN 34.9, PAFPN with shortcuts 36.1,
R-PAFPN 36.5 box AP with an adder backbone and neck). The paper's figure is not reproduced in its
text, so the layout here is this reading of it:

- laterals: ``L_i = norm(1x1(C_i))`` for the backbone levels (strides 8-32);
- bottom-up: ``B_3 = L_3``, ``B_i = L_i + down(B_{i-1})``;
- top-down: ``T_top = B_top``, ``T_i = B_i + up(T_{i+1})`` (nearest);
- outputs: ``P_i = T_i + norm(3x3(T_i))``; ``P6 = down(P5)``, ``P7 = down(ReLU(P6))``;

where ``down(x) = norm(3x3 stride 2 (x)) + maxpool(x)``: a stride-2 layer with a pooled shortcut.
Every 3x3 and 1x1 layer is an adder layer with ``conv="adder"`` (a convolution otherwise), each
followed by ``norm``.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from vislab.models.necks.fpn import conv_norm
from vislab.models.shape_spec import ShapeSpec


class _Down(nn.Module):
    """A stride-2 3x3 layer and its norm, plus a 2x2 max-pooled shortcut."""

    def __init__(self, channels: int, *, norm: str, conv: str):
        super().__init__()
        self.layer = conv_norm(channels, channels, 3, norm=norm, stride=2, conv=conv)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.layer(x)
        return out + F.max_pool2d(x, kernel_size=2, stride=2, ceil_mode=True)[..., :out.shape[-2], :out.shape[-1]]


class RPAFPN(nn.Module):
    """``p3``..``p7`` of ``out_channels`` from the backbone outputs ``in_features`` (strides 8, 16,
    32, finest first)."""

    def __init__(self, *, input_shapes: dict[str, ShapeSpec], in_features: Sequence[str], out_channels: int = 256,
                 norm: str = "BN", conv: str = "adder"):
        super().__init__()
        missing = [name for name in in_features if name not in input_shapes]
        if missing:
            raise ValueError(f"R-PAFPN in_features {missing} are not backbone outputs; it has {sorted(input_shapes)}")
        if norm == "none":
            raise ValueError("R-PAFPN needs a norm after its layers (norm=BN, SyncBN or GN)")
        self.in_features = tuple(in_features)
        self.lateral = nn.ModuleList(conv_norm(input_shapes[name].channels, out_channels, 1, norm=norm, conv=conv)
                                     for name in in_features)
        self.bottom_up = nn.ModuleList(_Down(out_channels, norm=norm, conv=conv) for _ in in_features[1:])
        self.output = nn.ModuleList(conv_norm(out_channels, out_channels, 3, norm=norm, conv=conv)
                                    for _ in in_features)
        self.extra = nn.ModuleList(_Down(out_channels, norm=norm, conv=conv) for _ in range(2))
        strides = [input_shapes[name].stride for name in in_features]
        strides += [strides[-1] * 2, strides[-1] * 4]
        self._shapes = {f"p{s.bit_length() - 1}": ShapeSpec(channels=out_channels, stride=s) for s in strides}

    def output_shape(self) -> dict[str, ShapeSpec]:
        return dict(self._shapes)

    def forward(self, features: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        laterals = [layer(features[name]) for layer, name in zip(self.lateral, self.in_features)]
        merged = [laterals[0]]
        for lateral, down in zip(laterals[1:], self.bottom_up):
            merged.append(lateral + down(merged[-1]))
        for level in range(len(merged) - 2, -1, -1):
            merged[level] = merged[level] + F.interpolate(merged[level + 1], size=merged[level].shape[-2:],
                                                          mode="nearest")
        outputs = [x + layer(x) for x, layer in zip(merged, self.output)]
        p6 = self.extra[0](outputs[-1])
        outputs += [p6, self.extra[1](F.relu(p6))]
        return dict(zip(self._shapes, outputs))
