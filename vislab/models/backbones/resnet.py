"""ResNet (He et al., 2016) and ResNeXt (Xie et al., 2017) with any norm layer.

The layout follows torchvision's ResNet v1.5 (stride on the 3x3 conv of a bottleneck), so its
parameter counts match torchvision exactly and its weights convert by renaming keys.
Group Normalization (Wu & He, 2018) and the other norms come from ``vislab.layers.get_norm``.
``conv="adder"`` builds AdderNet's ResNets (Chen et al., 2020, section 4): every convolution of
the residual stages, shortcuts included, is an adder layer followed by its norm; the stem keeps
its multiplications. Three stages (``depths`` of length 3) give the CIFAR ResNets (ResNet-20).
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from vislab.layers import get_norm
from vislab.layers.adder import ADDER_KINDS, adder_conv
from vislab.layers.invariance import InvariantConv2d
from vislab.models.backbones.stages import run_stages
from vislab.models.shape_spec import ShapeSpec

STAGE_NAMES = ("res2", "res3", "res4", "res5")


CONV_KINDS = ("conv", "ift", *ADDER_KINDS)


def conv2d(w_in: int, w_out: int, k: int, *, stride: int = 1, groups: int = 1, kind: str = "conv") -> nn.Module:
    """A bias-free convolution with 'same' padding for odd kernels, an adder layer (``kind`` a key
    of ``ADDER_KINDS``: "adder", "adder_sign" for the sign input gradient of Adder FCOS, either
    with "_centered" for centred output channels), or a convolution with the
    invariance feature transform ("ift"; with a bias, which carries the folded ``-W' mu``)."""
    if kind == "ift":
        if groups != 1:
            raise ValueError("conv=ift supports ungrouped convolutions only (ResNets, not ResNeXts)")
        return InvariantConv2d(w_in, w_out, k, stride=stride, padding=k // 2)
    if kind in ADDER_KINDS:
        return adder_conv(kind, w_in, w_out, k, stride=stride, groups=groups)
    return nn.Conv2d(w_in, w_out, k, stride=stride, padding=k // 2, groups=groups, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with an identity or projection shortcut (ResNet-18/34)."""

    expansion = 1

    def __init__(self, w_in: int, planes: int, *, stride: int, groups: int, width_per_group: int,
                 norm: str, norm_groups: int, stride_in_1x1: bool = False, conv: str = "conv"):
        super().__init__()
        if groups != 1 or width_per_group != 64 or stride_in_1x1:
            raise ValueError("BasicBlock supports only groups=1, width_per_group=64 and stride_in_1x1=False")
        self.conv1 = conv2d(w_in, planes, 3, stride=stride, kind=conv)
        self.norm1 = get_norm(norm, planes, groups=norm_groups)
        self.conv2 = conv2d(planes, planes, 3, kind=conv)
        self.norm2 = get_norm(norm, planes, groups=norm_groups)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _shortcut(w_in, planes, stride=stride, norm=norm, norm_groups=norm_groups, conv=conv)

    @property
    def last_norm(self) -> nn.Module:
        return self.norm2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.norm1(self.conv1(x)))
        out = self.norm2(self.conv2(out))
        out += shortcut  # in place: one activation fewer per block (no norm's backward needs its output)
        return self.relu(out)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (grouped for ResNeXt, strided), 1x1 expand; output is 4x ``planes``.

    ``stride_in_1x1`` moves the stride to the first 1x1 conv, the original MSRA ResNet
    (detectron2's ``STRIDE_IN_1X1``) rather than torchvision's v1.5."""

    expansion = 4

    def __init__(self, w_in: int, planes: int, *, stride: int, groups: int, width_per_group: int,
                 norm: str, norm_groups: int, stride_in_1x1: bool = False, conv: str = "conv"):
        super().__init__()
        inner = int(planes * (width_per_group / 64.0)) * groups
        w_out = planes * self.expansion
        self.conv1 = conv2d(w_in, inner, 1, stride=stride if stride_in_1x1 else 1, kind=conv)
        self.norm1 = get_norm(norm, inner, groups=norm_groups)
        self.conv2 = conv2d(inner, inner, 3, stride=1 if stride_in_1x1 else stride, groups=groups, kind=conv)
        self.norm2 = get_norm(norm, inner, groups=norm_groups)
        self.conv3 = conv2d(inner, w_out, 1, kind=conv)
        self.norm3 = get_norm(norm, w_out, groups=norm_groups)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _shortcut(w_in, w_out, stride=stride, norm=norm, norm_groups=norm_groups, conv=conv)

    @property
    def last_norm(self) -> nn.Module:
        return self.norm3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.norm1(self.conv1(x)))
        out = self.relu(self.norm2(self.conv2(out)))
        out = self.norm3(self.conv3(out))
        out += shortcut  # in place, as in BasicBlock
        return self.relu(out)


def _shortcut(w_in: int, w_out: int, *, stride: int, norm: str, norm_groups: int, conv: str) -> nn.Module | None:
    if stride == 1 and w_in == w_out:
        return None
    return nn.Sequential(conv2d(w_in, w_out, 1, stride=stride, kind=conv), get_norm(norm, w_out, groups=norm_groups))


BLOCKS = {"basic": BasicBlock, "bottleneck": Bottleneck}


class ResNetStem(nn.Module):
    """7x7/2 conv + 3x3/2 max-pool (stride 4), or with ``small`` a 3x3/1 conv without pooling
    for 32x32 inputs such as CIFAR or the embedded digits."""

    def __init__(self, w_in: int, w_out: int, *, norm: str, norm_groups: int, small: bool, conv: str = "conv"):
        super().__init__()
        self.conv = conv2d(w_in, w_out, 3 if small else 7, stride=1 if small else 2, kind=conv)
        self.norm = get_norm(norm, w_out, groups=norm_groups)
        self.relu = nn.ReLU(inplace=True)
        self.pool = nn.Identity() if small else nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.stride = 1 if small else 4

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.relu(self.norm(self.conv(x))))


class ResNet(nn.Module):
    """A ResNet/ResNeXt trunk; ``forward_features`` returns ``res2``..``res5`` (``res4`` with
    three stages).

    Args:
        block: "basic" (ResNet-18/34) or "bottleneck".
        depths: residual blocks per stage, e.g. (3, 4, 6, 3) for ResNet-50; three stages for the
            CIFAR ResNets, e.g. (3, 3, 3) with ``width=0.25`` and ``small_stem`` for ResNet-20.
        groups, width_per_group: ResNeXt cardinality and per-group width (32, 4 for 32x4d).
        width: multiplier on every stage width (64 channels in the first stage at 1.0).
        norm, norm_groups: norm layer name for ``get_norm`` and GroupNorm's group count.
        small_stem: 3x3 stride-1 stem without max-pool, for tiny images.
        stride_in_1x1: stride in a bottleneck's first 1x1 conv (MSRA / detectron2 weights).
        zero_init_residual: start each residual branch's last norm at zero scale, so every block
            is the identity at initialisation (Goyal et al., 2017, section 5.1).
        conv: "conv", or "adder" for AdderNet's adder layers in the residual stages ("adder_sign":
            with the sign input gradient of Adder FCOS; "_centered" after either: with centred
            output channels, see ``AdderConv2d``), or "ift" for the invariance feature
            transform in every convolution (Ye et al., 2021; usually with ``norm="none"``).
    """

    def __init__(self, *, block: str, depths: Sequence[int], groups: int = 1,
                 width_per_group: int = 64, width: float = 1.0, norm: str = "BN",
                 norm_groups: int = 32, small_stem: bool = False, zero_init_residual: bool = False,
                 in_chans: int = 3, stride_in_1x1: bool = False, conv: str = "conv"):
        super().__init__()
        if block not in BLOCKS:
            raise ValueError(f"unknown block {block!r}; choose one of {sorted(BLOCKS)}")
        if len(depths) not in (3, 4):
            raise ValueError(f"depths must list 4 stages (or 3, CIFAR ResNets), got {list(depths)}")
        if conv not in CONV_KINDS:
            raise ValueError(f"unknown conv {conv!r}; choose one of {', '.join(CONV_KINDS)}")
        block_cls = BLOCKS[block]
        self.stage_names = STAGE_NAMES[:len(depths)]
        base = int(round(64 * width))
        self.norm = norm
        # adder networks keep the stem's multiplications (AdderNet, section 4); the invariance
        # transform applies to every convolution
        self.stem = ResNetStem(in_chans, base, norm=norm, norm_groups=norm_groups, small=small_stem,
                               conv="ift" if conv == "ift" else "conv")
        self._shapes: dict[str, ShapeSpec] = {}
        w_in, stride = base, self.stem.stride
        for index, (name, depth) in enumerate(zip(self.stage_names, depths)):
            planes = base * 2**index
            first_stride = 1 if index == 0 else 2
            blocks = []
            for b in range(depth):
                blocks.append(block_cls(w_in, planes, stride=first_stride if b == 0 else 1,
                                        groups=groups, width_per_group=width_per_group, norm=norm,
                                        norm_groups=norm_groups, stride_in_1x1=stride_in_1x1, conv=conv))
                w_in = planes * block_cls.expansion
            stride *= first_stride
            self.add_module(name, nn.Sequential(*blocks))
            self._shapes[name] = ShapeSpec(channels=w_in, stride=stride)
        self.num_features = w_in
        self._init_weights(zero_init_residual=zero_init_residual)

    def _init_weights(self, *, zero_init_residual: bool) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, (nn.BatchNorm2d, nn.SyncBatchNorm, nn.GroupNorm)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, (BasicBlock, Bottleneck)) and hasattr(m.last_norm, "weight"):
                    nn.init.zeros_(m.last_norm.weight)

    def output_shape(self) -> dict[str, ShapeSpec]:
        return dict(self._shapes)

    def forward_features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return run_stages(self, x, stage_names=self.stage_names)

    def forward_pooled(self, x: torch.Tensor) -> torch.Tensor:
        """Global average pool of the last stage: the feature vector a classifier reads."""
        return self.forward_features(x)[self.stage_names[-1]].mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.forward_features(x)
