"""Cascade R-CNN's second stage (Cai & Vasconcelos, 2018, section 4), with detectron2's
``CascadeROIHeads`` rules.

Stage ``t`` takes the boxes regressed by stage ``t - 1`` as its proposals and is trained on them
re-labelled at a higher IoU (0.5 / 0.6 / 0.7 by default; 0.5 / 0.7 / 0.8 in the frozen-backbone
paper), with its own box head, class-agnostic regression and box-coder weights ((10, 10, 5, 5),
(20, 20, 10, 10), (30, 30, 15, 15): later stages see smaller deltas, section 4.2). Only the first
stage samples (512 per image, a quarter foreground, ground truth appended); later stages label
every box the previous stage regressed (clipped, empty ones dropped). Each stage's losses are
added, and the gradient into the shared pooled features is scaled by 1 / stages (detectron2's
equivalent of averaging the losses while keeping each head's full gradient).

Inference: every stage scores its own proposals; the class probabilities are averaged over the
stages and the boxes are the last stage's regression (section 4.4, "cascade ensemble"). The mask
head is trained on the first stage's foreground samples and applied to the final detections.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn
from torch.nn import functional as F
from torchvision.ops import clip_boxes_to_image

from vislab.models.detection.box_coder import BoxCoder
from vislab.models.detection.heads import BoxHead, BoxPredictor
from vislab.models.detection.matcher import Matcher
from vislab.models.detection.roi_heads import RegionHeads

STAGE_IOUS = (0.5, 0.6, 0.7)
STAGE_BOX_CODER_WEIGHTS = ((10.0, 10.0, 5.0, 5.0), (20.0, 20.0, 10.0, 10.0), (30.0, 30.0, 15.0, 15.0))


class _ScaleGradient(torch.autograd.Function):
    """The identity forward; the gradient multiplied by ``scale`` backward."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad * ctx.scale, None


class CascadeROIHeads(RegionHeads):
    """Cascade box heads (``box_heads[t]`` and ``box_predictors[t]`` per stage) and one mask head.

    Args:
        box_heads: one box head per stage (their count is the number of stages).
        stage_ious: the IoU at which each stage's boxes are foreground.
        stage_box_coder_weights: each stage's box-coder weights.
        common: ``RegionHeads`` options (the first stage samples with them; its IoU is
            ``stage_ious[0]``).
    """

    def __init__(self, *, box_heads: Sequence[BoxHead], stage_ious: Sequence[float] = STAGE_IOUS,
                 stage_box_coder_weights: Sequence[Sequence[float]] = STAGE_BOX_CODER_WEIGHTS, **common):
        if not len(box_heads) == len(stage_ious) == len(stage_box_coder_weights):
            raise ValueError(f"a cascade needs one IoU and one set of box-coder weights per stage: "
                             f"{len(box_heads)} heads, ious {list(stage_ious)}, weights {list(stage_box_coder_weights)}")
        super().__init__(iou_threshold=stage_ious[0], **common)
        self.num_stages = len(box_heads)
        self.box_heads = nn.ModuleList(box_heads)
        self.box_predictors = nn.ModuleList(
            BoxPredictor(in_features=head.out_features, num_classes=self.num_classes, class_agnostic=True)
            for head in box_heads)
        self.box_coders = [BoxCoder(weights=w) for w in stage_box_coder_weights]
        self.matchers = [Matcher(thresholds=(iou, iou), allow_low_quality=False) for iou in stage_ious]

    def _run_stage(self, stage: int, features: Sequence[torch.Tensor], boxes: Sequence[torch.Tensor]):
        pooled = self.box_pooler(features, boxes)
        if self.training:
            pooled = _ScaleGradient.apply(pooled, 1.0 / self.num_stages)
        return self.box_predictors[stage](self.box_heads[stage](pooled))

    def _regressed(self, stage: int, deltas: torch.Tensor, boxes: Sequence[torch.Tensor],
                   image_sizes: Sequence[tuple[int, int]]) -> list[torch.Tensor]:
        """Stage ``stage``'s boxes per image, clipped and detached: the next stage's proposals."""
        decoded = self.box_coders[stage].decode(deltas.detach(), torch.cat(boxes))
        return [clip_boxes_to_image(b, tuple(size)) for b, size in zip(decoded.split([b.shape[0] for b in boxes]),
                                                                       image_sizes)]

    def forward(self, features: Sequence[torch.Tensor], proposals: Sequence[torch.Tensor],
                image_sizes: Sequence[tuple[int, int]], targets: Sequence[dict] | None = None):
        """Training: a dict of losses (``loss_cls_stage{t}``, ``loss_box_reg_stage{t}``,
        ``loss_mask``). Inference: per image ``boxes``, ``scores``, ``labels`` and
        ``mask_probs``, as ``ROIHeads``."""
        if self.training:
            return self._losses(features, proposals, image_sizes, targets)
        boxes, probs = list(proposals), []
        for stage in range(self.num_stages):
            logits, deltas = self._run_stage(stage, features, boxes)
            probs.append(F.softmax(logits.float(), dim=-1))
            boxes = self._regressed(stage, deltas, boxes, image_sizes)
        final_boxes = torch.cat(boxes)[:, None, :]
        detections = self._detections(torch.stack(probs).mean(dim=0), final_boxes, [b.shape[0] for b in boxes],
                                      image_sizes)
        return self._add_masks(features, detections)

    def _losses(self, features, proposals, image_sizes, targets) -> dict[str, torch.Tensor]:
        first = self._sample(proposals, targets, box_coder=self.box_coders[0])
        samples, losses = first, {}
        for stage in range(self.num_stages):
            if stage:
                samples = [self._label(b[(b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])], target,
                                       matcher=self.matchers[stage], box_coder=self.box_coders[stage])
                           for b, target in zip(boxes, targets)]
            logits, deltas = self._run_stage(stage, features, [s["boxes"] for s in samples])
            losses.update({f"{k}_stage{stage}": v for k, v in self._box_losses(logits, deltas, samples).items()})
            if stage + 1 < self.num_stages:
                boxes = self._regressed(stage, deltas, [s["boxes"] for s in samples], image_sizes)
        if self.mask_head is not None:
            losses["loss_mask"] = self._mask_loss(features, first, targets)
        return losses
