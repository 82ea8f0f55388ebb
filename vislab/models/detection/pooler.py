"""RoIAlign (Mask R-CNN section 3) over a feature pyramid, each box read from the level its size
assigns (FPN eq. 1)."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn
from torchvision.ops import roi_align


def assign_levels(boxes: torch.Tensor, *, min_level: int, max_level: int, canonical_size: float = 224.0,
                  canonical_level: int = 4, eps: float = 1e-6) -> torch.Tensor:
    """FPN eq. 1: ``k = floor(k0 + log2(sqrt(w h) / 224))`` clamped to the pyramid, as an index
    from 0 (``min_level``)."""
    sizes = torch.sqrt((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))
    levels = torch.floor(canonical_level + torch.log2(sizes / canonical_size + eps))
    return (torch.clamp(levels, min=min_level, max=max_level) - min_level).to(torch.int64)


class MultiLevelRoIAlign(nn.Module):
    """Pools every box to ``resolution`` x ``resolution`` from its FPN level.

    ``aligned`` shifts sampling points by half a pixel (detectron2's ROIAlignV2; torchvision's
    Mask R-CNN uses False); ``sampling_ratio`` 0 picks ceil(bin size) points per bin adaptively
    (detectron2), torchvision uses 2.
    """

    def __init__(self, *, strides: Sequence[int], resolution: int, sampling_ratio: int = 0,
                 aligned: bool = True):
        super().__init__()
        self.scales = [1.0 / s for s in strides]
        self.min_level = int(strides[0]).bit_length() - 1
        self.max_level = int(strides[-1]).bit_length() - 1
        self.resolution = resolution
        self.sampling_ratio = sampling_ratio
        self.aligned = aligned

    def forward(self, features: Sequence[torch.Tensor], boxes: Sequence[torch.Tensor]) -> torch.Tensor:
        rois = torch.cat([torch.cat((torch.full_like(b[:, :1], i), b), dim=1) for i, b in enumerate(boxes)])
        out = features[0].new_zeros((rois.shape[0], features[0].shape[1], self.resolution, self.resolution))
        levels = assign_levels(rois[:, 1:], min_level=self.min_level, max_level=self.max_level)
        # no branch on a level's box count (RoIAlign takes none as well): torch.export cannot follow
        # a branch on a data-dependent size, and every count here depends on the detections
        for level, (feature, scale) in enumerate(zip(features, self.scales)):
            index = torch.nonzero(levels == level).squeeze(1)
            out[index] = roi_align(feature, rois[index].to(feature.dtype), self.resolution, spatial_scale=scale,
                                   sampling_ratio=self.sampling_ratio, aligned=self.aligned).to(out.dtype)
        return out
