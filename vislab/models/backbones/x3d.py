"""X3D (Feichtenhofer, 2020, "X3D: Expanding Architectures for Efficient Video Recognition").

A 2-D mobile-style ResNet expanded along width, bottleneck width and depth (table 1): a
``1x3x3`` conv and a channel-wise ``5x1x1`` conv as stem; stages of bottlenecks whose middle conv
is a channel-wise ``3x3x3``, with squeeze-excitation (ratio 1/16) on every other block and swish
after it; then ``conv5`` (1x1x1 to the bottleneck width), global pooling and the 2048-wide
``lin5`` (1x1x1 without norm) + ReLU before the classifier. Widths and depths are computed as
pytorchvideo's ``create_x3d`` computes them, so parameter counts match it exactly
(X3D-M 3,794,274 with 400 classes).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from vislab.layers import get_norm
from vislab.models.backbones.resnet3d import STAGE_NAMES, conv3d, init_video_weights, last_stage_stride
from vislab.models.backbones.stages import run_stages
from vislab.models.shape_spec import ShapeSpec

BASE_DEPTHS = (1, 2, 5, 3)


def round_width(width: float, multiplier: float, *, divisor: int = 8) -> int:
    """``width * multiplier`` rounded to a multiple of ``divisor`` (at least ``divisor``) and not
    below 90% of the exact value: the channel rounding of X3D and pytorchvideo."""
    exact = width * multiplier
    rounded = max(divisor, int(exact + divisor / 2) // divisor * divisor)
    return int(rounded + divisor if rounded < 0.9 * exact else rounded)


def round_depth(depth: int, multiplier: float) -> int:
    return int(math.ceil(depth * multiplier))


class SqueezeExcitation3d(nn.Module):
    """Channel gates from the clip's mean features (Hu et al., 2018): 1x1x1 conv, ReLU, 1x1x1
    conv, sigmoid."""

    def __init__(self, channels: int, reduced: int):
        super().__init__()
        self.fc1 = nn.Conv3d(channels, reduced, 1)
        self.fc2 = nn.Conv3d(reduced, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.fc2(torch.relu(self.fc1(x.mean(dim=(2, 3, 4), keepdim=True))))
        return x * torch.sigmoid(scale)


class X3DBlock(nn.Module):
    """1x1x1 conv, norm, ReLU; channel-wise 3x3x3 conv (spatially strided), norm, optional SE,
    swish; 1x1x1 conv, norm; residual add and ReLU.

    The shortcut is a strided 1x1x1 conv when the stride or width changes, followed by a norm only
    when the width changes (so res2's first shortcut, 24 -> 24 channels, has none), as in
    pytorchvideo's ``create_x3d_res_block``.
    """

    def __init__(self, w_in: int, w_out: int, *, inner: int, stride: int, se_channels: int, norm: str,
                 norm_groups: int, dilation: int = 1):
        super().__init__()
        self.conv1 = conv3d(w_in, inner, (1, 1, 1))
        self.norm1 = get_norm(norm, inner, groups=norm_groups, dims=3)
        self.conv2 = conv3d(inner, inner, (3, 3, 3), stride=(1, stride, stride), groups=inner,
                            dilation=(1, dilation, dilation))
        self.norm2 = get_norm(norm, inner, groups=norm_groups, dims=3)
        self.se = SqueezeExcitation3d(inner, se_channels) if se_channels else nn.Identity()
        self.conv3 = conv3d(inner, w_out, (1, 1, 1))
        self.norm3 = get_norm(norm, w_out, groups=norm_groups, dims=3)
        self.relu = nn.ReLU(inplace=True)
        self.swish = nn.SiLU()
        self.downsample = None
        if stride != 1 or w_in != w_out:
            layers = [conv3d(w_in, w_out, (1, 1, 1), stride=(1, stride, stride))]
            if w_in != w_out:
                layers.append(get_norm(norm, w_out, groups=norm_groups, dims=3))
            self.downsample = nn.Sequential(*layers)

    @property
    def last_norm(self) -> nn.Module:
        return self.norm3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.norm1(self.conv1(x)))
        out = self.swish(self.se(self.norm2(self.conv2(out))))
        out = self.norm3(self.conv3(out))
        out += shortcut  # in place, as in the ResNets' blocks
        return self.relu(out)


class X3DStem(nn.Module):
    """``1x3x3`` conv with spatial stride 2, channel-wise ``t x 1 x 1`` conv, norm, ReLU."""

    stride = 2

    def __init__(self, w_in: int, w_out: int, *, temporal_kernel: int, norm: str, norm_groups: int):
        super().__init__()
        self.conv_xy = conv3d(w_in, w_out, (1, 3, 3), stride=(1, 2, 2))
        self.conv_t = conv3d(w_out, w_out, (temporal_kernel, 1, 1), groups=w_out)
        self.norm = get_norm(norm, w_out, groups=norm_groups, dims=3)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.norm(self.conv_t(self.conv_xy(x))))


class X3D(nn.Module):
    """X3D trunk; ``forward_features`` returns ``res2``..``res5`` and ``conv5`` (table 1's 1x1x1
    conv on res5 to the bottleneck width, with norm and ReLU: 432 channels for X3D-M),
    ``forward_pooled`` the ``lin5`` features (``num_features`` = ``head_width``).

    Args:
        width_factor: gamma_w, the channel expansion of stem and stages (2.0 for every variant).
        depth_factor: gamma_d, multiplying the base depths (1, 2, 5, 3): 2.2 (XS, S, M), 5.0 (L).
        bottleneck_factor: gamma_b, the bottleneck (inner) width per output channel (2.25).
        base_width: stem and res2 width before expansion (12, i.e. 24 channels).
        se_ratio: squeeze-excitation reduction (1/16) on blocks 0, 2, 4, ... of each stage.
        head_width: width of ``lin5`` (2048); 0 builds no ``lin5`` (``nn.Identity``, left out of
            Kinetics weights by ``load_backbone_weights``): a detection trunk reads ``conv5``.
        stem_temporal_kernel: temporal size of the stem's channel-wise conv (5).
        norm, norm_groups, zero_init_residual, res5_dilation: as in ``ResNet3d`` (a dilated res5
            dilates its channel-wise 3x3x3 convs spatially, as PySlowFast's X3D transform does with
            ``SPATIAL_DILATIONS``).
    """

    def __init__(self, *, width_factor: float = 2.0, depth_factor: float = 2.2, bottleneck_factor: float = 2.25,
                 base_width: int = 12, se_ratio: float = 1 / 16, head_width: int = 2048,
                 stem_temporal_kernel: int = 5, norm: str = "BN", norm_groups: int = 32,
                 zero_init_residual: bool = False, res5_dilation: int = 1, in_chans: int = 3):
        super().__init__()
        w_in = round_width(base_width, width_factor)
        self.stem = X3DStem(in_chans, w_in, temporal_kernel=stem_temporal_kernel, norm=norm,
                            norm_groups=norm_groups)
        self._shapes: dict[str, ShapeSpec] = {}
        stage_base, stride = base_width, self.stem.stride
        for index, name in enumerate(STAGE_NAMES):
            if index > 0:
                stage_base = round_width(stage_base, 2.0)
            w_out = round_width(stage_base, width_factor)
            inner = int(bottleneck_factor * w_out)
            se_channels = round_width(inner, se_ratio) if se_ratio > 0 else 0
            first_stride = last_stage_stride(res5_dilation) if name == "res5" else 2
            blocks = []
            for b in range(round_depth(BASE_DEPTHS[index], depth_factor)):
                blocks.append(X3DBlock(w_in, w_out, inner=inner, stride=first_stride if b == 0 else 1,
                                       se_channels=se_channels if b % 2 == 0 else 0, norm=norm,
                                       norm_groups=norm_groups, dilation=res5_dilation if name == "res5" else 1))
                w_in = w_out
            stride *= first_stride
            self.add_module(name, nn.Sequential(*blocks))
            self._shapes[name] = ShapeSpec(channels=w_out, stride=stride)
        self.conv5 = conv3d(w_in, inner, (1, 1, 1))
        self.norm5 = get_norm(norm, inner, groups=norm_groups, dims=3)
        self._shapes["conv5"] = ShapeSpec(channels=inner, stride=stride)
        self.lin5 = nn.Linear(inner, head_width, bias=False) if head_width else nn.Identity()
        self.num_features = head_width or inner
        init_video_weights(self, zero_init_residual=zero_init_residual)
        if head_width:
            nn.init.kaiming_normal_(self.lin5.weight, mode="fan_out", nonlinearity="relu")

    def output_shape(self) -> dict[str, ShapeSpec]:
        return dict(self._shapes)

    def forward_features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        features = run_stages(self, x, stage_names=STAGE_NAMES)
        features["conv5"] = torch.relu(self.norm5(self.conv5(features["res5"])))
        return features

    def forward_pooled(self, x: torch.Tensor) -> torch.Tensor:
        """``conv5`` global average pool, ``lin5`` + ReLU (section 3)."""
        return torch.relu(self.lin5(self.forward_features(x)["conv5"].mean(dim=(2, 3, 4))))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.forward_features(x)
