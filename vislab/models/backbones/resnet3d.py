"""3-D ResNet trunks for video: C2D, I3D and Slow (PySlowFast / pytorchvideo layouts).

A 2-D ResNet-50 whose bottlenecks' first 1x1 conv becomes a ``t x 1 x 1`` conv in chosen blocks
(Feichtenhofer et al., 2019, "SlowFast Networks", table 1: the Slow pathway uses temporal
kernels only in res4 and res5), after a ``t x 7 x 7`` stem conv (5 for I3D, 1 otherwise). C2D
and I3D max-pool time by 2 after res2 (Wang et al., 2018, table 1). Spatial strides sit on the
3x3 conv as in torchvision's ResNet, and module names follow vislab's 2-D ``ResNet``, so 2-D
weights inflate into it by shape alone (``vislab.convert.inflate``).
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from vislab.layers import get_norm
from vislab.layers.nonlocal_block import NonLocalBlock
from vislab.models.shape_spec import ShapeSpec

STAGE_NAMES = ("res2", "res3", "res4", "res5")


def conv3d(w_in: int, w_out: int, kernel: Sequence[int], *, stride: Sequence[int] = (1, 1, 1),
           groups: int = 1, dilation: Sequence[int] = (1, 1, 1)) -> nn.Conv3d:
    """A bias-free 3-D convolution with 'same' padding for odd kernels (``dilation * (k // 2)``)."""
    padding = tuple(d * (k // 2) for k, d in zip(kernel, dilation))
    return nn.Conv3d(w_in, w_out, tuple(kernel), stride=tuple(stride), padding=padding, groups=groups,
                     dilation=tuple(dilation), bias=False)


def last_stage_stride(res5_dilation: int) -> int:
    """The spatial stride of res5's first block: 2, or 1 when res5 is dilated by 2 instead (the AVA
    detectors' res5 at stride 16: SlowFast paper, section 5.1; PySlowFast ``SPATIAL_STRIDES``
    ``[[1], [2], [2], [1]]`` with ``SPATIAL_DILATIONS`` ``[[1], [1], [1], [2]]``)."""
    if res5_dilation not in (1, 2):
        raise ValueError(f"res5_dilation must be 1 (stride 32) or 2 (stride 16), got {res5_dilation}")
    return 2 // res5_dilation


class Bottleneck3d(nn.Module):
    """``t x 1 x 1`` reduce, ``1 x 3 x 3`` (spatially strided or dilated), ``1 x 1 x 1`` expand,
    residual add, ReLU; then the non-local block placed after this block, if any."""

    expansion = 4

    def __init__(self, w_in: int, planes: int, *, stride: int, temporal_kernel: int, norm: str,
                 norm_groups: int, nonlocal_block: NonLocalBlock | None = None, dilation: int = 1):
        super().__init__()
        w_out = planes * self.expansion
        self.conv1 = conv3d(w_in, planes, (temporal_kernel, 1, 1))
        self.norm1 = get_norm(norm, planes, groups=norm_groups, dims=3)
        self.conv2 = conv3d(planes, planes, (1, 3, 3), stride=(1, stride, stride), dilation=(1, dilation, dilation))
        self.norm2 = get_norm(norm, planes, groups=norm_groups, dims=3)
        self.conv3 = conv3d(planes, w_out, (1, 1, 1))
        self.norm3 = get_norm(norm, w_out, groups=norm_groups, dims=3)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or w_in != w_out:
            self.downsample = nn.Sequential(conv3d(w_in, w_out, (1, 1, 1), stride=(1, stride, stride)),
                                            get_norm(norm, w_out, groups=norm_groups, dims=3))
        self.nonlocal_block = nonlocal_block

    @property
    def last_norm(self) -> nn.Module:
        return self.norm3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.norm1(self.conv1(x)))
        out = self.relu(self.norm2(self.conv2(out)))
        out = self.norm3(self.conv3(out))
        out += shortcut  # in place, as in the 2-D ResNet's blocks
        out = self.relu(out)
        return out if self.nonlocal_block is None else self.nonlocal_block(out)


class Stem3d(nn.Module):
    """``t x 7 x 7`` conv with spatial stride 2, norm, ReLU, ``1 x 3 x 3`` max-pool with stride 2."""

    stride = 4

    def __init__(self, w_in: int, w_out: int, *, temporal_kernel: int, norm: str, norm_groups: int):
        super().__init__()
        self.conv = conv3d(w_in, w_out, (temporal_kernel, 7, 7), stride=(1, 2, 2))
        self.norm = get_norm(norm, w_out, groups=norm_groups, dims=3)
        self.relu = nn.ReLU(inplace=True)
        self.pool = nn.MaxPool3d((1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.relu(self.norm(self.conv(x))))


class ResNet3d(nn.Module):
    """A 3-D ResNet trunk; ``forward_features`` returns ``res2``..``res5`` of (N, C, T, H, W).

    Args:
        depths: bottlenecks per stage, (3, 4, 6, 3) for ResNet-50.
        stem_temporal_kernel: temporal size of the stem conv (I3D 5, C2D/Slow 1).
        temporal_kernels: per stage, the temporal sizes of the blocks' first conv, repeated over
            the stage's blocks: I3D ``((3,), (3, 1), (3, 1), (1, 3))``, Slow
            ``((1,), (1,), (3,), (3,))`` (PySlowFast's ``_TEMPORAL_KERNEL_BASIS``).
        temporal_pool: max-pool time by this factor after res2 (2 for C2D/I3D: PySlowFast's
            ``_POOL1``; 1 for Slow).
        nonlocal_locations: per stage, the indices of the blocks followed by a non-local block,
            e.g. ``((), (1, 3), (1, 3, 5), ())`` (PySlowFast's ``NONLOCAL.LOCATION`` for I3D NLN).
        nonlocal_instantiation, nonlocal_pool: the non-local blocks' options (``NonLocalBlock``).
        width: multiplier on every stage width (64 stem channels at 1.0; 1/8 for a Fast pathway).
        lateral_channels: per stage, channels concatenated to the stage's input from another
            pathway (the Slow pathway of SlowFast); zeros for a single-pathway network.
        norm, norm_groups: norm layer name for ``get_norm`` and GroupNorm's group count.
        zero_init_residual: start each block's last norm at zero scale, as PySlowFast's Kinetics
            recipes do (``RESNET.ZERO_INIT_FINAL_BN``; Goyal et al., 2017, section 5.1).
        res5_dilation: 2 keeps res5 at stride 16 (no spatial stride, its 3x3 convs dilated by 2), as
            the AVA detectors do (``last_stage_stride``); the weights are the same tensors.
    """

    def __init__(self, *, depths: Sequence[int], stem_temporal_kernel: int = 1,
                 temporal_kernels: Sequence[Sequence[int]] = ((1,), (1,), (3,), (3,)),
                 temporal_pool: int = 1, nonlocal_locations: Sequence[Sequence[int]] = ((), (), (), ()),
                 nonlocal_instantiation: str = "softmax", nonlocal_pool: Sequence[int] | None = (1, 2, 2),
                 width: float = 1.0, lateral_channels: Sequence[int] = (0, 0, 0, 0), norm: str = "BN",
                 norm_groups: int = 32, zero_init_residual: bool = False, res5_dilation: int = 1,
                 in_chans: int = 3):
        super().__init__()
        for name, value in (("depths", depths), ("temporal_kernels", temporal_kernels),
                            ("nonlocal_locations", nonlocal_locations), ("lateral_channels", lateral_channels)):
            if len(value) != 4:
                raise ValueError(f"{name} must list 4 stages (res2..res5), got {list(value)}")
        for stage, (depth, locations) in enumerate(zip(depths, nonlocal_locations)):
            if any(not 0 <= index < depth for index in locations):
                raise ValueError(f"nonlocal_locations {list(locations)} of {STAGE_NAMES[stage]} "
                                 f"fall outside its {depth} blocks")
        base = int(round(64 * width))
        self.stem = Stem3d(in_chans, base, temporal_kernel=stem_temporal_kernel, norm=norm,
                           norm_groups=norm_groups)
        self.temporal_pool = (nn.MaxPool3d((temporal_pool, 1, 1), stride=(temporal_pool, 1, 1))
                              if temporal_pool > 1 else nn.Identity())
        self._shapes: dict[str, ShapeSpec] = {}
        w_in, stride = base, self.stem.stride
        for index, name in enumerate(STAGE_NAMES):
            planes, dilation = base * 2**index, res5_dilation if name == "res5" else 1
            first_stride = 1 if index == 0 else last_stage_stride(res5_dilation) if name == "res5" else 2
            kernels = temporal_kernels[index]
            blocks = []
            for b in range(depths[index]):
                nonlocal_block = None
                if b in nonlocal_locations[index]:
                    nonlocal_block = NonLocalBlock(planes * Bottleneck3d.expansion,
                                                   instantiation=nonlocal_instantiation, pool_size=nonlocal_pool,
                                                   norm=norm, norm_groups=norm_groups)
                blocks.append(Bottleneck3d(w_in + (lateral_channels[index] if b == 0 else 0), planes,
                                           stride=first_stride if b == 0 else 1,
                                           temporal_kernel=kernels[b % len(kernels)], norm=norm,
                                           norm_groups=norm_groups, nonlocal_block=nonlocal_block,
                                           dilation=dilation))
                w_in = planes * Bottleneck3d.expansion
            stride *= first_stride
            self.add_module(name, nn.Sequential(*blocks))
            self._shapes[name] = ShapeSpec(channels=w_in, stride=stride)
        self.num_features = w_in
        init_video_weights(self, zero_init_residual=zero_init_residual)

    def output_shape(self) -> dict[str, ShapeSpec]:
        return dict(self._shapes)

    def forward_features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self.stem(x)
        features = {}
        for name in STAGE_NAMES:
            if name == "res3":
                x = self.temporal_pool(x)
            x = getattr(self, name)(x)
            features[name] = x
        return features

    def forward_pooled(self, x: torch.Tensor) -> torch.Tensor:
        """Global average pool of ``res5`` over time and space."""
        return self.forward_features(x)["res5"].mean(dim=(2, 3, 4))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.forward_features(x)


def init_video_weights(model: nn.Module, *, zero_init_residual: bool) -> None:
    """PySlowFast's initialisation (``init_helper.init_weights``): convs He-normal (fan-out), their
    biases zero; norms at their unit-scale default; with ``zero_init_residual`` each residual
    block's last norm at zero scale. Non-local blocks keep their zero-initialised output norm."""
    for m in model.modules():
        if isinstance(m, nn.Conv3d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    for m in model.modules():
        if isinstance(m, NonLocalBlock):
            m.zero_init_output()
        elif zero_init_residual and getattr(getattr(m, "last_norm", None), "weight", None) is not None:
            nn.init.zeros_(m.last_norm.weight)
