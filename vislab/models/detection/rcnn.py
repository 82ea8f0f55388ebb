"""The R-CNN meta-architecture: backbone, feature-pyramid neck, RPN and ROI heads (Faster R-CNN;
Mask R-CNN with a mask head; Cascade R-CNN with cascade heads), with the backbone freezing options
of fine-tuning and frozen-backbone studies."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from torch.nn import functional as F

from vislab.layers.norm import FrozenBatchNorm2d
from vislab.models.detection.postprocess import to_original_size
from vislab.models.detection.roi_heads import RegionHeads
from vislab.models.detection.rpn import RPN

RESNET_FREEZE_ORDER = ("stem", "res2", "res3", "res4", "res5")


class GeneralizedRCNN(nn.Module):
    """``forward(images, image_sizes, targets)`` gives the loss dict in training and, in eval
    mode, per image a dict of ``boxes`` (input pixels), ``scores``, ``labels`` (0..C-1) and
    ``mask_probs``; ``postprocess`` maps those to the original images.

    Args:
        backbone: a trunk with ``forward_features`` and ``output_shape``.
        fpn: the neck that turns the trunk's maps into the pyramid ``p2``.. (an FPN, ViTDet's
            simple pyramid, NAS-FPN); the RPN reads every level.
        roi_levels: the levels the ROI heads pool from; None: every level but ``p6`` (the
            FPN's subsampled top level serves only the RPN).
        freeze_at: freeze the first ``freeze_at`` of stem, res2, ..., res5 (detectron2's
            convention: 2 freezes the stem and res2); their BatchNorms become FrozenBN.
        frozen_backbone: freeze the whole backbone, norms in eval mode (detection on frozen
            backbones: only the neck and heads learn).
        square_pad: pad every batch with zeros at the bottom and right to this square side
            (ViTDet's fixed 1024 input, whose windows and position tables assume it); 0 keeps
            the batch's own padded size.
    """

    def __init__(self, *, backbone: nn.Module, fpn: nn.Module, rpn: RPN, roi_heads: RegionHeads,
                 roi_levels: Sequence[str] | None = None, freeze_at: int = 0, frozen_backbone: bool = False,
                 square_pad: int = 0):
        super().__init__()
        self.backbone = backbone
        self.fpn = fpn
        self.rpn = rpn
        self.roi_heads = roi_heads
        self.num_classes = roi_heads.num_classes
        self.frozen_backbone = frozen_backbone
        self.square_pad = square_pad
        levels = fpn.output_shape()
        self.roi_levels = list(roi_levels) if roi_levels is not None else [name for name in levels if name != "p6"]
        unknown = [name for name in self.roi_levels if name not in levels]
        if unknown:
            raise ValueError(f"roi_levels {unknown} are not levels of the neck; it has {list(levels)}")
        if frozen_backbone:
            self._freeze(backbone)
        elif freeze_at:
            self._freeze_stages(freeze_at)

    @staticmethod
    def _freeze(module: nn.Module) -> None:
        for param in module.parameters():
            param.requires_grad_(False)

    def _freeze_stages(self, freeze_at: int) -> None:
        missing = [name for name in RESNET_FREEZE_ORDER if not hasattr(self.backbone, name)]
        if missing:
            raise ValueError(f"freeze_at={freeze_at} needs a ResNet-style backbone with {RESNET_FREEZE_ORDER}; "
                             f"{type(self.backbone).__name__} has no {missing}")
        for name in RESNET_FREEZE_ORDER[:freeze_at]:
            stage = FrozenBatchNorm2d.convert(getattr(self.backbone, name))
            setattr(self.backbone, name, stage)
            self._freeze(stage)

    def train(self, mode: bool = True) -> "GeneralizedRCNN":
        super().train(mode)
        if self.frozen_backbone:
            self.backbone.eval()
        return self

    def no_weight_decay(self) -> set[str]:
        return {f"backbone.{n}" for n in getattr(self.backbone, "no_weight_decay", set)()}

    @property
    def num_lr_layers(self) -> int:
        """The backbone's layer count for layer-wise lr decay (0 when it numbers none)."""
        return getattr(self.backbone, "num_lr_layers", 0)

    def lr_layer_id(self, name: str) -> int:
        """The backbone's numbering for its parameters; the neck and heads are the top layer
        (full lr), as ViTDet's ``get_vit_lr_decay_rate``."""
        if name.startswith("backbone."):
            return self.backbone.lr_layer_id(name.removeprefix("backbone."))
        return self.num_lr_layers

    def forward(self, images: torch.Tensor, image_sizes: Sequence[tuple[int, int]] | None = None,
                targets: Sequence[dict] | None = None):
        if image_sizes is None:
            image_sizes = [tuple(images.shape[-2:])] * len(images)
        if self.training and targets is None:
            raise ValueError("training a detector needs targets")
        images = self._pad_square(images)
        pyramid = self.fpn(self._trunk_features(images))  # the trunk's maps are freed once the FPN is built
        proposals, rpn_losses = self.rpn(list(pyramid.values()), image_sizes, targets)
        roi_features = [pyramid[name] for name in self.roi_levels]
        if self.training:
            return {**rpn_losses, **self.roi_heads(roi_features, proposals, image_sizes, targets)}
        return self.roi_heads(roi_features, proposals, image_sizes)

    def _pad_square(self, images: torch.Tensor) -> torch.Tensor:
        if not self.square_pad:
            return images
        height, width = images.shape[-2:]
        if max(height, width) > self.square_pad:
            raise ValueError(f"a {height}x{width} batch does not fit the model's {self.square_pad}-pixel square "
                             f"input: resize images to at most {self.square_pad} on the longer side")
        return F.pad(images, (0, self.square_pad - width, 0, self.square_pad - height))

    def _trunk_features(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen_backbone):
            return self.backbone.forward_features(images)

    @staticmethod
    def postprocess(detections: Sequence[dict], *, input_sizes: Sequence[tuple[int, int]],
                    original_sizes: Sequence[tuple[int, int]], mask_threshold: float = 0.5) -> list[dict]:
        return to_original_size(detections, input_sizes=input_sizes, original_sizes=original_sizes,
                                mask_threshold=mask_threshold)
