"""Pre-activation ResNet v2 as used by BiT (Kolesnikov et al., 2020, "Big Transfer").

BiT (section 4.3) takes the pre-activation ResNet of He et al. (2016b, "Identity Mappings in
Deep Residual Networks"), replaces BatchNorm by GroupNorm (32 groups) and standardises the
weight of every convolution; "RxN" models multiply every width by N. The layout follows timm's
``resnetv2_*_bit`` models (stride on the 3x3 conv, TF-style "SAME" max-pool approximation in
the stem), so their weights convert by renaming keys. The norm is any of ``get_norm``'s and
``weight_std=False`` gives plain convolutions.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from vislab.layers import DropPath, WeightStdConv2d, drop_path_rates, get_norm
from vislab.models.backbones.stages import run_stages
from vislab.models.shape_spec import ShapeSpec

STAGE_NAMES = ("res2", "res3", "res4", "res5")


def make_conv(w_in: int, w_out: int, k: int, *, stride: int = 1, weight_std: bool) -> nn.Conv2d:
    """A bias-free convolution with 'same' padding for odd kernels, weight-standardised or not."""
    conv_cls = WeightStdConv2d if weight_std else nn.Conv2d
    return conv_cls(w_in, w_out, k, stride=stride, padding=k // 2, bias=False)


class PreActBottleneck(nn.Module):
    """norm+ReLU -> 1x1 -> norm+ReLU -> 3x3 (strided) -> norm+ReLU -> 1x1, added to the shortcut.

    The block normalises its input first (He et al., 2016b, fig. 4e), so nothing follows the
    addition; a projection shortcut reads the pre-activated input, as in BiT and timm.
    """

    def __init__(self, w_in: int, w_out: int, *, stride: int, norm: str, norm_groups: int,
                 weight_std: bool, drop_path: float):
        super().__init__()
        inner = w_out // 4
        self.norm1 = get_norm(norm, w_in, groups=norm_groups)
        self.conv1 = make_conv(w_in, inner, 1, weight_std=weight_std)
        self.norm2 = get_norm(norm, inner, groups=norm_groups)
        self.conv2 = make_conv(inner, inner, 3, stride=stride, weight_std=weight_std)
        self.norm3 = get_norm(norm, inner, groups=norm_groups)
        self.conv3 = make_conv(inner, w_out, 1, weight_std=weight_std)
        # Not in place: with norm="none" the pre-activation would overwrite the shortcut input.
        self.relu = nn.ReLU()
        needs_projection = stride != 1 or w_in != w_out
        self.projection = make_conv(w_in, w_out, 1, stride=stride, weight_std=weight_std) if needs_projection else None
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        preact = self.relu(self.norm1(x))
        shortcut = x if self.projection is None else self.projection(preact)
        out = self.conv1(preact)
        out = self.conv2(self.relu(self.norm2(out)))
        out = self.conv3(self.relu(self.norm3(out)))
        return shortcut + self.drop_path(out)


class BiTStem(nn.Module):
    """7x7/2 conv, then zero padding of 1 and a 3x3/2 max-pool without padding (stride 4).

    No norm: the first block pre-activates. Zero padding before the pool (instead of the -inf
    padding of ``MaxPool2d(padding=1)``) reproduces TensorFlow's "SAME" pooling of the original
    BiT models on even-sized maps (timm's "fixed" stem).
    """

    stride = 4

    def __init__(self, w_in: int, w_out: int, *, weight_std: bool):
        super().__init__()
        self.conv = make_conv(w_in, w_out, 7, stride=2, weight_std=weight_std)
        self.pad = nn.ConstantPad2d(1, 0.0)
        self.pool = nn.MaxPool2d(kernel_size=3, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.pad(self.conv(x)))


class ResNetV2(nn.Module):
    """A pre-activation ResNet v2 trunk; ``forward_features`` returns ``res2``..``res5``.

    ``res2``..``res4`` are the residual streams between stages (the next block normalises them).
    ``res5`` is the last stage after the final norm+ReLU that pre-activation networks need before
    any head (He et al., 2016b, section 4.1), so a detector reading ``res5`` and the classifier
    reading ``forward_pooled`` (its global average) see the same activated map; this is timm's
    ``forward_features`` output.

    Args:
        depths: bottleneck blocks per stage, e.g. (3, 4, 6, 3) for R50.
        width_factor: multiplier on every width (BiT's "x1", "x3"): 64 stem channels and
            256, 512, 1024, 2048 stage outputs at 1.
        norm, norm_groups: norm layer name for ``get_norm`` and GroupNorm's group count.
        weight_std: weight-standardised convolutions (BiT) or plain ones.
        drop_path_rate: stochastic depth rate of the last block, rising linearly from 0.
    """

    def __init__(self, *, depths: Sequence[int], width_factor: float = 1.0, norm: str = "GN",
                 norm_groups: int = 32, weight_std: bool = True, drop_path_rate: float = 0.0,
                 in_chans: int = 3):
        super().__init__()
        if len(depths) != 4:
            raise ValueError(f"depths must list 4 stages, got {list(depths)}")
        self.in_chans = in_chans
        stem_width = int(round(64 * width_factor))
        self.stem = BiTStem(in_chans, stem_width, weight_std=weight_std)
        rates = iter(drop_path_rates(drop_path_rate, sum(depths)))
        self._shapes: dict[str, ShapeSpec] = {}
        self._first_lr_layer: dict[str, int] = {}
        w_in, stride, blocks_before = stem_width, self.stem.stride, 0
        for index, (name, depth) in enumerate(zip(STAGE_NAMES, depths)):
            w_out = int(round(256 * 2**index * width_factor))
            first_stride = 1 if index == 0 else 2
            blocks = []
            for b in range(depth):
                blocks.append(PreActBottleneck(w_in, w_out, stride=first_stride if b == 0 else 1,
                                               norm=norm, norm_groups=norm_groups,
                                               weight_std=weight_std, drop_path=next(rates)))
                w_in = w_out
            stride *= first_stride
            self.add_module(name, nn.Sequential(*blocks))
            self._shapes[name] = ShapeSpec(channels=w_out, stride=stride)
            self._first_lr_layer[name] = blocks_before + 1
            blocks_before += depth
        self.norm = get_norm(norm, w_in, groups=norm_groups)
        self.relu = nn.ReLU()
        self.num_features = w_in
        self._num_blocks = blocks_before
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def output_shape(self) -> dict[str, ShapeSpec]:
        return dict(self._shapes)

    def forward_features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        if x.ndim != 4 or x.shape[1] != self.in_chans:
            raise ValueError(f"input of shape {tuple(x.shape)} does not fit: expected "
                             f"(N, {self.in_chans}, H, W)")
        features = run_stages(self, x, stage_names=STAGE_NAMES)
        features["res5"] = self.relu(self.norm(features["res5"]))
        return features

    def forward_pooled(self, x: torch.Tensor) -> torch.Tensor:
        """Global average pool of the activated ``res5``: the vector a classifier reads."""
        return self.forward_features(x)["res5"].mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.forward_features(x)

    def no_weight_decay(self) -> set[str]:
        return set()

    @property
    def num_lr_layers(self) -> int:
        return self._num_blocks + 1

    def lr_layer_id(self, name: str) -> int:
        """0 for the stem, 1..num_blocks for the residual blocks in order (as timm's
        ``group_matcher`` groups them), ``num_lr_layers`` for the final norm."""
        if name.startswith("stem."):
            return 0
        stage, _, rest = name.partition(".")
        if stage in self._first_lr_layer:
            return self._first_lr_layer[stage] + int(rest.split(".")[0])
        return self.num_lr_layers
