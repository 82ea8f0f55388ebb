"""The second stage of Faster/Mask R-CNN: per-proposal classification, box regression and masks
(Fast R-CNN section 2; Mask R-CNN section 3).

``RegionHeads`` holds what every second stage shares: the RoIAlign poolers, proposal labelling
and sampling, the box losses, per-class NMS and the mask head. ``ROIHeads`` is the standard one
(one box head, class-specific regression); ``vislab.models.detection.cascade`` the Cascade R-CNN.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn
from torch.nn import functional as F
from torchvision.ops import box_iou, clip_boxes_to_image, remove_small_boxes, roi_align

from vislab.models.detection.box_coder import BoxCoder
from vislab.models.detection.heads import BoxHead, BoxPredictor, MaskHead
from vislab.models.detection.matcher import Matcher, sample_labels
from vislab.models.detection.nms import batched_nms
from vislab.models.detection.pooler import MultiLevelRoIAlign


class RegionHeads(nn.Module):
    """Training: proposals (plus the ground-truth boxes) are matched at ``iou_threshold``,
    ``batch_size_per_image`` sampled per image with at most ``positive_fraction`` foreground;
    cross-entropy over classes, L1 on the foreground deltas (normalised by the sampled count)
    and per-pixel binary cross-entropy of the true class's 28x28 mask (Mask R-CNN eq.
    "L_mask") on foreground proposals.

    Inference: scores above ``score_threshold``, NMS per class at ``nms_threshold``, the best
    ``detections_per_image``; masks are predicted on those boxes and returned as 28x28
    probabilities (pasted into the image by ``paste_masks``).
    """

    def __init__(self, *, num_classes: int, strides: Sequence[int], mask_head: MaskHead | None = None,
                 box_resolution: int = 7, mask_resolution: int = 14, sampling_ratio: int = 0, aligned: bool = True,
                 batch_size_per_image: int = 512, positive_fraction: float = 0.25, iou_threshold: float = 0.5,
                 score_threshold: float = 0.05, nms_threshold: float = 0.5, detections_per_image: int = 100,
                 min_box_size: float = 1e-2):
        super().__init__()
        self.num_classes = num_classes
        self.box_pooler = MultiLevelRoIAlign(strides=strides, resolution=box_resolution,
                                             sampling_ratio=sampling_ratio, aligned=aligned)
        self.mask_head = mask_head
        self.mask_pooler = (MultiLevelRoIAlign(strides=strides, resolution=mask_resolution,
                                               sampling_ratio=sampling_ratio, aligned=aligned)
                            if mask_head is not None else None)
        self.matcher = Matcher(thresholds=(iou_threshold, iou_threshold), allow_low_quality=False)
        self.batch_size_per_image = batch_size_per_image
        self.positive_fraction = positive_fraction
        self.score_threshold = score_threshold
        self.nms_threshold = nms_threshold
        self.detections_per_image = detections_per_image
        self.min_box_size = min_box_size

    def _label(self, boxes: torch.Tensor, target: dict, *, matcher: Matcher, box_coder: BoxCoder) -> dict:
        """Each box's class (``num_classes`` = background), matched ground-truth index and
        regression target, by ``matcher``'s IoU threshold."""
        gt_boxes, gt_labels = target["boxes"], target["labels"]
        matches, match_labels = matcher(box_iou(gt_boxes, boxes))
        classes = gt_labels[matches] if len(gt_labels) else matches.new_zeros(len(boxes))
        classes = torch.where(match_labels > 0, classes, self.num_classes)
        matched_gt = gt_boxes[matches] if len(gt_boxes) else boxes
        return {"boxes": boxes, "classes": classes, "matches": matches, "match_labels": match_labels,
                "deltas": box_coder.encode(matched_gt, boxes)}

    @torch.no_grad()
    def _sample(self, proposals: Sequence[torch.Tensor], targets: Sequence[dict], *,
                box_coder: BoxCoder) -> list[dict]:
        """Per image: the sampled proposals (foreground first), their class, the index of their
        matched ground-truth box, their regression targets and the foreground count."""
        samples = []
        for image_proposals, target in zip(proposals, targets):
            labelled = self._label(torch.cat((image_proposals, target["boxes"])), target,
                                   matcher=self.matcher, box_coder=box_coder)
            pos, neg = sample_labels(labelled.pop("match_labels").long(), num_samples=self.batch_size_per_image,
                                     positive_fraction=self.positive_fraction)
            keep = torch.cat((pos, neg))
            samples.append({**{k: v[keep] for k, v in labelled.items()}, "num_fg": pos.numel()})
        return samples

    def _box_losses(self, logits: torch.Tensor, deltas: torch.Tensor, samples: Sequence[dict]) -> dict[str, torch.Tensor]:
        """Cross-entropy over classes and L1 on the foreground's deltas (its class's, or the one
        class-agnostic box), summed and divided by the number of labelled boxes (detectron2)."""
        classes = torch.cat([s["classes"] for s in samples])
        fg = torch.nonzero(classes < self.num_classes).squeeze(1)
        per_class = deltas.view(len(deltas), -1, 4)
        fg_deltas = per_class[fg, classes[fg] if per_class.shape[1] > 1 else 0]
        target_deltas = torch.cat([s["deltas"] for s in samples])[fg]
        return {"loss_cls": F.cross_entropy(logits.float(), classes),
                "loss_box_reg": F.l1_loss(fg_deltas.float(), target_deltas, reduction="sum") / max(classes.numel(), 1)}

    def _mask_loss(self, features, samples, targets) -> torch.Tensor:
        fg_boxes = [s["boxes"][: s["num_fg"]] for s in samples]
        classes = torch.cat([s["classes"][: s["num_fg"]] for s in samples])
        logits = self._mask_logits(features, fg_boxes, classes)
        if logits.shape[0] == 0:
            return logits.sum() * 0
        resolution = logits.shape[-1]
        mask_targets = []
        for sample, target, boxes in zip(samples, targets, fg_boxes):
            gt_masks = target["masks"][:, None].to(boxes.dtype)
            matches = sample["matches"][: sample["num_fg"]]
            rois = torch.cat((matches[:, None].to(boxes.dtype), boxes), dim=1)
            mask_targets.append(roi_align(gt_masks, rois, resolution, spatial_scale=1.0, sampling_ratio=0,
                                          aligned=True)[:, 0] >= 0.5)
        return F.binary_cross_entropy_with_logits(logits.float(), torch.cat(mask_targets).float())

    def _mask_logits(self, features: Sequence[torch.Tensor], boxes: Sequence[torch.Tensor],
                     classes: torch.Tensor) -> torch.Tensor:
        """The mask head's logits for ``classes`` in two calls, so that at inference the pooled
        14x14 features are freed before the 28x28 upsampling, the head's memory peak (torchvision
        splits its head and predictor there too)."""
        hidden = self.mask_head.convs(self.mask_pooler(features, boxes))
        return self.mask_head.upsample_and_predict(hidden, classes)

    def _add_masks(self, features: Sequence[torch.Tensor], detections: list[dict]) -> list[dict]:
        if self.mask_head is None:
            return detections
        boxes = [d["boxes"] for d in detections]
        labels = torch.cat([d["labels"] for d in detections])
        probs = self._mask_logits(features, boxes, labels).sigmoid()
        for detection, image_probs in zip(detections, probs.split([b.shape[0] for b in boxes])):
            detection["mask_probs"] = image_probs
        return detections

    def _detections(self, probs: torch.Tensor, boxes: torch.Tensor, counts: Sequence[int],
                    image_sizes: Sequence[tuple[int, int]]) -> list[dict]:
        """Per image the detections from class probabilities ``probs`` ``[N, C + 1]``
        (background last) and boxes ``[N, C, 4]`` per class or ``[N, 1, 4]`` class-agnostic."""
        num_classes = self.num_classes
        scores = probs[:, :num_classes]
        boxes = boxes.expand(-1, num_classes, -1)
        detections = []
        for image_scores, image_boxes, size in zip(scores.split(counts), boxes.split(counts), image_sizes):
            image_boxes = clip_boxes_to_image(image_boxes, tuple(size)).reshape(-1, 4)
            labels = torch.arange(num_classes, device=scores.device).expand_as(image_scores).reshape(-1)
            image_scores = image_scores.reshape(-1)
            keep = torch.nonzero((image_scores > self.score_threshold) & torch.isfinite(image_boxes).all(dim=1)).squeeze(1)
            if self.min_box_size > 0:
                keep = keep[remove_small_boxes(image_boxes[keep], self.min_box_size)]
            keep = keep[batched_nms(image_boxes[keep], image_scores[keep], labels[keep], self.nms_threshold)]
            keep = keep[: self.detections_per_image]
            detections.append({"boxes": image_boxes[keep], "scores": image_scores[keep], "labels": labels[keep]})
        return detections


class ROIHeads(RegionHeads):
    """The standard second stage: one box head and a class-specific box predictor with
    ``box_coder_weights`` (10, 10, 5, 5); softmax scores. See ``RegionHeads`` for the rest."""

    def __init__(self, *, box_head: BoxHead, box_coder_weights: Sequence[float] = (10.0, 10.0, 5.0, 5.0),
                 **common):
        super().__init__(**common)
        self.box_head = box_head
        self.box_predictor = BoxPredictor(in_features=box_head.out_features, num_classes=self.num_classes)
        self.box_coder = BoxCoder(weights=box_coder_weights)

    def forward(self, features: Sequence[torch.Tensor], proposals: Sequence[torch.Tensor],
                image_sizes: Sequence[tuple[int, int]], targets: Sequence[dict] | None = None):
        """Training: a dict of losses. Inference: per image a dict of ``boxes``, ``scores``,
        ``labels`` (0..C-1) and, with a mask head, ``mask_probs`` [N, 28, 28]."""
        if self.training:
            samples = self._sample(proposals, targets, box_coder=self.box_coder)
            pooled = self.box_pooler(features, [s["boxes"] for s in samples])
            losses = self._box_losses(*self.box_predictor(self.box_head(pooled)), samples)
            if self.mask_head is not None:
                losses["loss_mask"] = self._mask_loss(features, samples, targets)
            return losses
        logits, deltas = self.box_predictor(self.box_head(self.box_pooler(features, proposals)))
        boxes = self.box_coder.decode(deltas, torch.cat(proposals)).view(-1, self.num_classes, 4)
        detections = self._detections(F.softmax(logits.float(), dim=-1), boxes, [p.shape[0] for p in proposals],
                                      image_sizes)
        return self._add_masks(features, detections)
