"""SlowFast networks (Feichtenhofer et al., 2019) in the PySlowFast / pytorchvideo layout.

A Slow pathway (full width, few frames, temporal kernels only in res4/res5) and a Fast pathway
(``beta`` of the width, ``alpha`` times the frames, temporal kernels everywhere: stem 5, then 3),
both 3-D ResNets. After the stem and res2..res4 a lateral connection sends the Fast features to
the Slow pathway: a ``k x 1 x 1`` conv with temporal stride ``alpha`` and ``2 * beta * C`` output
channels, norm and ReLU, concatenated to the Slow features (section 3.4, "time-strided
convolution"). The model takes one clip at the Fast frame rate and picks the Slow frames itself.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from vislab.layers import get_norm
from vislab.models.backbones.resnet3d import STAGE_NAMES, ResNet3d, init_video_weights
from vislab.models.shape_spec import ShapeSpec

LATERAL_NAMES = ("stem", "res2", "res3", "res4")


def slow_pathway_frames(frames: torch.Tensor, *, alpha: int) -> torch.Tensor:
    """The Slow pathway's ``T // alpha`` frames of a (N, C, T, H, W) clip, evenly spaced from the
    first to the last frame (PySlowFast's ``PackPathway``)."""
    num_frames = frames.shape[2]
    if num_frames < alpha:
        raise ValueError(f"a SlowFast clip needs at least alpha={alpha} frames, got {num_frames}")
    index = torch.linspace(0, num_frames - 1, num_frames // alpha, device=frames.device).long()
    return frames.index_select(2, index)


class LateralConnection(nn.Module):
    """Fast-to-Slow fusion: time-strided ``k x 1 x 1`` conv, norm, ReLU (section 3.4)."""

    def __init__(self, w_fast: int, *, channel_ratio: int, kernel: int, alpha: int, norm: str,
                 norm_groups: int):
        super().__init__()
        w_out = w_fast * channel_ratio
        self.conv = nn.Conv3d(w_fast, w_out, (kernel, 1, 1), stride=(alpha, 1, 1), padding=(kernel // 2, 0, 0),
                              bias=False)
        self.norm = get_norm(norm, w_out, groups=norm_groups, dims=3)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, fast: torch.Tensor) -> torch.Tensor:
        return self.relu(self.norm(self.conv(fast)))


class SlowFast(nn.Module):
    """SlowFast trunk; ``forward_features`` returns ``slow_res2``..``slow_res5`` and
    ``fast_res2``..``fast_res5`` (each stage's output before fusion).

    Args:
        depths: bottlenecks per stage of both pathways, (3, 4, 6, 3) for R50.
        alpha: frame-rate ratio of Fast to Slow (8 for 4x16, 4 for 8x8); also the lateral stride.
        beta_inv: the Fast pathway has ``1 / beta_inv`` of the Slow pathway's channels (8).
        fusion_kernel: temporal size of the lateral convs (5 in the paper, 7 for R50 8x8).
        fusion_channel_ratio: lateral output channels per Fast channel (2, i.e. ``2 * beta * C``).
        slow_temporal_kernels, fast_temporal_kernels: per stage, as ``ResNet3d.temporal_kernels``
            (table 1: Slow 1, 1, 3, 3; Fast 3 in every stage); the stems use 1 and 5.
        width: multiplier on both pathways' widths (1.0 for the paper's models).
        slow_nonlocal_locations, nonlocal_instantiation, nonlocal_pool: non-local blocks in the Slow
            pathway, as ``ResNet3d``'s (PySlowFast ``NONLOCAL.LOCATION`` of pathway 0; its AVA
            SlowFast R101 has three in res4).
        norm, norm_groups, zero_init_residual, res5_dilation: as in ``ResNet3d``, for both pathways.
    """

    def __init__(self, *, depths: Sequence[int], alpha: int, beta_inv: int = 8, fusion_kernel: int = 5,
                 fusion_channel_ratio: int = 2,
                 slow_temporal_kernels: Sequence[Sequence[int]] = ((1,), (1,), (3,), (3,)),
                 fast_temporal_kernels: Sequence[Sequence[int]] = ((3,), (3,), (3,), (3,)),
                 slow_nonlocal_locations: Sequence[Sequence[int]] = ((), (), (), ()),
                 nonlocal_instantiation: str = "softmax", nonlocal_pool: Sequence[int] | None = (1, 2, 2),
                 width: float = 1.0, norm: str = "BN", norm_groups: int = 32, zero_init_residual: bool = False,
                 res5_dilation: int = 1, in_chans: int = 3):
        super().__init__()
        self.alpha = alpha
        fast_width = width / beta_inv
        self.fast = ResNet3d(depths=depths, stem_temporal_kernel=5, temporal_kernels=fast_temporal_kernels,
                             width=fast_width, norm=norm, norm_groups=norm_groups,
                             zero_init_residual=zero_init_residual, res5_dilation=res5_dilation, in_chans=in_chans)
        fast_channels = [self.fast.stem.conv.out_channels] + [
            self.fast.output_shape()[name].channels for name in STAGE_NAMES[:-1]]
        self.slow = ResNet3d(depths=depths, stem_temporal_kernel=1, temporal_kernels=slow_temporal_kernels,
                             nonlocal_locations=slow_nonlocal_locations, nonlocal_instantiation=nonlocal_instantiation,
                             nonlocal_pool=nonlocal_pool,
                             lateral_channels=[c * fusion_channel_ratio for c in fast_channels], width=width, norm=norm,
                             norm_groups=norm_groups, zero_init_residual=zero_init_residual,
                             res5_dilation=res5_dilation, in_chans=in_chans)
        self.lateral = nn.ModuleDict({
            name: LateralConnection(channels, channel_ratio=fusion_channel_ratio, kernel=fusion_kernel,
                                    alpha=alpha, norm=norm, norm_groups=norm_groups)
            for name, channels in zip(LATERAL_NAMES, fast_channels)})
        self._shapes = {f"{pathway}_{name}": getattr(self, pathway).output_shape()[name]
                        for pathway in ("slow", "fast") for name in STAGE_NAMES}
        self.num_features = self.slow.num_features + self.fast.num_features
        init_video_weights(self.lateral, zero_init_residual=False)

    def output_shape(self) -> dict[str, ShapeSpec]:
        return dict(self._shapes)

    def forward_features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """``x`` is the clip at the Fast frame rate, (N, C, T, H, W); the Slow pathway sees T // alpha
        of its frames."""
        slow = self.slow.stem(slow_pathway_frames(x, alpha=self.alpha))
        fast = self.fast.stem(x)
        slow = torch.cat([slow, self.lateral["stem"](fast)], dim=1)
        features = {}
        for name in STAGE_NAMES:
            slow, fast = getattr(self.slow, name)(slow), getattr(self.fast, name)(fast)
            features[f"slow_{name}"], features[f"fast_{name}"] = slow, fast
            if name in self.lateral:
                slow = torch.cat([slow, self.lateral[name](fast)], dim=1)
        return features

    def forward_pooled(self, x: torch.Tensor) -> torch.Tensor:
        """Both pathways' ``res5`` averaged over time and space, concatenated (Slow first)."""
        features = self.forward_features(x)
        pooled = [features[f"{pathway}_res5"].mean(dim=(2, 3, 4)) for pathway in ("slow", "fast")]
        return torch.cat(pooled, dim=1)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.forward_features(x)
