"""The R-CNN meta-architecture: trunk, feature-pyramid neck, RPN and ROI heads (Faster R-CNN;
Mask R-CNN with a mask head; Cascade R-CNN with cascade heads)."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from vislab.models.detection.detector import PyramidDetector, default_image_sizes
from vislab.models.detection.roi_heads import RegionHeads
from vislab.models.detection.rpn import RPN


class GeneralizedRCNN(PyramidDetector):
    """``forward(images, image_sizes, targets)`` gives the loss dict in training and, in eval
    mode, per image a dict of ``boxes`` (input pixels), ``scores``, ``labels`` (0..C-1) and
    ``mask_probs``; ``postprocess.to_original_size`` maps those to the original images.

    Args:
        rpn: proposals from every pyramid level.
        roi_heads: the second stage (standard or cascade).
        roi_levels: the levels the ROI heads pool from; None: every level but ``p6`` (the
            FPN's subsampled top level serves only the RPN).
        trunk: ``backbone``, ``fpn``, ``freeze_at``, ``frozen_backbone``, ``square_pad`` (see
            ``PyramidDetector``).
    """

    def __init__(self, *, rpn: RPN, roi_heads: RegionHeads, roi_levels: Sequence[str] | None = None, **trunk):
        super().__init__(**trunk)
        self.rpn = rpn
        self.roi_heads = roi_heads
        self.num_classes = roi_heads.num_classes
        levels = self.fpn.output_shape()
        self.roi_levels = list(roi_levels) if roi_levels is not None else [name for name in levels if name != "p6"]
        unknown = [name for name in self.roi_levels if name not in levels]
        if unknown:
            raise ValueError(f"roi_levels {unknown} are not levels of the neck; it has {list(levels)}")

    def forward(self, images: torch.Tensor, image_sizes: Sequence[tuple[int, int]] | None = None,
                targets: Sequence[dict] | None = None):
        image_sizes = default_image_sizes(images, image_sizes)
        if self.training and targets is None:
            raise ValueError("training a detector needs targets")
        pyramid = self.pyramid(images)
        proposals, rpn_losses = self.rpn(list(pyramid.values()), image_sizes, targets)
        roi_features = [pyramid[name] for name in self.roi_levels]
        if self.training:
            return {**rpn_losses, **self.roi_heads(roi_features, proposals, image_sizes, targets)}
        return self.roi_heads(roi_features, proposals, image_sizes)
