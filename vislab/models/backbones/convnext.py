"""ConvNeXt (Liu et al., "A ConvNet for the 2020s", CVPR 2022).

A ResNet modernised step by step towards a Swin Transformer (paper, section 2): a 4x4 stride-4
"patchify" stem (2.2), separate LayerNorm + 2x2 stride-2 downsampling layers between stages
(2.6), and blocks of depthwise 7x7 conv -> LayerNorm -> inverted-bottleneck MLP with GELU (2.3 -
2.6), each branch scaled by a learnable per-channel "layer scale" (Touvron et al., 2021) and
dropped by stochastic depth during training. The layout, epsilons and initialisation follow the
official facebookresearch/ConvNeXt ``models/convnext.py``, so timm's weights convert by renaming.
"""
from __future__ import annotations

import re
from collections import OrderedDict
from typing import Sequence

import torch
from torch import nn

from vislab.layers import DropPath, LayerNorm2d, Mlp, drop_path_rates
from vislab.models.backbones.stages import run_stages
from vislab.models.shape_spec import ShapeSpec

STAGE_NAMES = ("stage1", "stage2", "stage3", "stage4")
LAYER_NORM_EPS = 1e-6
STEM_STRIDE = 4
TOTAL_STRIDE = 32


class ConvNeXtBlock(nn.Module):
    """``x + drop_path(gamma * mlp(norm(dwconv(x))))`` (paper, figure 4).

    The depthwise conv mixes space in (N, C, H, W); the LayerNorm and the MLP act on each
    position's channels, so they run channels-last as in the official code.
    """

    def __init__(self, dim: int, *, kernel_size: int, mlp_ratio: float, drop_path: float,
                 layer_scale_init: float | None):
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.mlp = Mlp(dim, int(mlp_ratio * dim))
        self.gamma = (None if layer_scale_init is None
                      else nn.Parameter(torch.full((dim,), float(layer_scale_init))))
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch = self.mlp(self.norm(self.dwconv(x).permute(0, 2, 3, 1)))
        if self.gamma is not None:
            branch = branch * self.gamma
        return x + self.drop_path(branch.permute(0, 3, 1, 2))


def _patchify_stem(in_chans: int, dim: int) -> nn.Sequential:
    """Non-overlapping 4x4 stride-4 conv followed by LayerNorm (paper, section 2.2)."""
    return nn.Sequential(OrderedDict(
        conv=nn.Conv2d(in_chans, dim, STEM_STRIDE, stride=STEM_STRIDE),
        norm=LayerNorm2d(dim, eps=LAYER_NORM_EPS),
    ))


def _downsample(w_in: int, w_out: int) -> nn.Sequential:
    """LayerNorm then 2x2 stride-2 conv; the norm keeps training stable (paper, section 2.6)."""
    return nn.Sequential(OrderedDict(
        norm=LayerNorm2d(w_in, eps=LAYER_NORM_EPS),
        conv=nn.Conv2d(w_in, w_out, 2, stride=2),
    ))


class ConvNeXtStage(nn.Module):
    """An optional downsampling layer and ``len(drop_paths)`` blocks of width ``dim``."""

    def __init__(self, w_in: int, dim: int, *, downsample: bool, drop_paths: Sequence[float],
                 kernel_size: int, mlp_ratio: float, layer_scale_init: float | None):
        super().__init__()
        self.downsample = _downsample(w_in, dim) if downsample else None
        self.blocks = nn.Sequential(*(
            ConvNeXtBlock(dim, kernel_size=kernel_size, mlp_ratio=mlp_ratio, drop_path=rate,
                          layer_scale_init=layer_scale_init)
            for rate in drop_paths
        ))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.downsample is not None:
            x = self.downsample(x)
        return self.blocks(x)


class ConvNeXt(nn.Module):
    """A ConvNeXt trunk; ``forward_features`` returns ``stage1``..``stage4`` (strides 4-32).

    Args:
        depths: blocks per stage, (3, 3, 9, 3) for ConvNeXt-T (paper, section 2.2 "stage ratio").
        dims: channels per stage, (96, 192, 384, 768) for ConvNeXt-T.
        kernel_size: depthwise kernel (7 in the paper; section 2.5 compares 3 to 11).
        mlp_ratio: hidden width of the inverted bottleneck over ``dim`` (4, section 2.3).
        drop_path_rate: stochastic depth of the last block; rates rise linearly from 0 over all
            blocks of the network.
        layer_scale_init: initial value of every layer-scale gamma (1e-6); None builds none.
        in_chans: input image channels.
        final_norm: the LayerNorm of the pooled features (a detection trunk, which is never
            pooled, has none).
    """

    def __init__(self, *, depths: Sequence[int] = (3, 3, 9, 3), dims: Sequence[int] = (96, 192, 384, 768),
                 kernel_size: int = 7, mlp_ratio: float = 4.0, drop_path_rate: float = 0.0,
                 layer_scale_init: float | None = 1e-6, in_chans: int = 3, final_norm: bool = True):
        super().__init__()
        if len(depths) != 4 or len(dims) != 4:
            raise ValueError(f"depths and dims must list 4 stages, got {list(depths)} and {list(dims)}")
        self.depths = tuple(depths)
        self.stem = _patchify_stem(in_chans, dims[0])
        rates = drop_path_rates(drop_path_rate, sum(depths))
        self._shapes: dict[str, ShapeSpec] = {}
        w_in, stride, first_block = dims[0], STEM_STRIDE, 0
        for index, (name, depth, dim) in enumerate(zip(STAGE_NAMES, depths, dims)):
            self.add_module(name, ConvNeXtStage(
                w_in, dim, downsample=index > 0, drop_paths=rates[first_block:first_block + depth],
                kernel_size=kernel_size, mlp_ratio=mlp_ratio, layer_scale_init=layer_scale_init))
            stride *= 1 if index == 0 else 2
            self._shapes[name] = ShapeSpec(channels=dim, stride=stride)
            w_in, first_block = dim, first_block + depth
        self.pooled_norm = nn.LayerNorm(w_in, eps=LAYER_NORM_EPS) if final_norm else nn.Identity()
        self.num_features = w_in
        self.apply(_init_weights)

    def output_shape(self) -> dict[str, ShapeSpec]:
        return dict(self._shapes)

    def forward_features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        height, width = x.shape[-2:]
        if height % TOTAL_STRIDE or width % TOTAL_STRIDE:
            raise ValueError(f"ConvNeXt needs input sides that are multiples of {TOTAL_STRIDE}, "
                             f"got {height}x{width}")
        return run_stages(self, x, stage_names=STAGE_NAMES)

    def forward_pooled(self, x: torch.Tensor) -> torch.Tensor:
        """Global average pool of ``stage4``, then LayerNorm: the vector the classifier reads."""
        return self.pooled_norm(self.forward_features(x)["stage4"].mean(dim=(2, 3)))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.forward_features(x)

    def no_weight_decay(self) -> set[str]:
        """None beyond the 1-D parameters (norms, biases, layer-scale gammas) already exempt."""
        return set()

    @property
    def num_lr_layers(self) -> int:
        """13: the official repository's ``num_layers = 12`` groups plus the head's id."""
        return 13

    def lr_layer_id(self, name: str) -> int:
        """Layer-wise lr decay id, as ``get_num_layer_for_convnext`` in the official
        facebookresearch/ConvNeXt ``optim_factory.py``: stem 0; stage 1 blocks 1; stage 2
        blocks 2; stage 3 blocks 3-11 in groups of 3 consecutive blocks (for its 27 blocks);
        stage 4 blocks 12; a downsampling layer takes the id of its stage's first block; the
        pooled norm (like the head) ``num_lr_layers``. With ``decay ** (13 - id)`` this is the
        official ``layer_decay ** (num_layers + 1 - id)``.

        The official code supports only a 27-block third stage; for other depths its blocks
        are spread evenly over the same 9 ids, ``3 + 9 * block // depth`` (so ConvNeXt-T's 9
        blocks get 3..11 rather than 3..5 followed by a jump to 12).
        """
        if name.startswith("stem."):
            return 0
        if name.startswith("pooled_norm."):
            return self.num_lr_layers
        match = re.match(r"stage([1-4])\.(?:blocks\.(\d+)|downsample)\.", name)
        if match is None:
            raise ValueError(f"{name!r} is not a parameter name of the ConvNeXt backbone")
        stage, block = int(match.group(1)), int(match.group(2) or 0)
        if stage in (1, 2):
            return stage
        if stage == 3:
            return 3 + 9 * block // self.depths[2]
        return 12


def _init_weights(module: nn.Module) -> None:
    """Truncated normal (std 0.02) weights and zero biases for convs and linears (official
    code); norms keep ones and zeros."""
    if isinstance(module, (nn.Conv2d, nn.Linear)):
        nn.init.trunc_normal_(module.weight, std=0.02)
        nn.init.zeros_(module.bias)
