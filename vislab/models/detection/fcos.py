"""FCOS (Tian et al., 2019, "FCOS: Fully Convolutional One-Stage Object Detection"), the
one-stage meta-architecture beside the R-CNN, with torchvision's rules so its weights give its
detections.

Every location of every pyramid level (P3-P7, strides 8-128) is one point (a square "anchor" of
the stride's size, centred on ``stride * (x, y)``). Training (section 3.1-3.3): a point is
foreground for a box when it lies inside it, within ``center_sampling_radius`` strides of its
centre (FCOS v2's centre sampling), and the box's largest side distance fits the level's range
(0-64, 64-128, ..., 512-inf pixels: 4 and 8 strides); of several boxes the smallest wins. Losses,
each divided by the foreground count: sigmoid focal loss over classes (alpha 0.25, gamma 2), GIoU
loss of the decoded boxes, and binary cross-entropy of the centre-ness. Inference: score =
sqrt(class probability x centre-ness), above ``score_threshold``, the best ``topk_candidates``
per level, NMS per class, the best ``detections_per_image``.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn
from torch.nn import functional as F
from torchvision.ops import clip_boxes_to_image, generalized_box_iou_loss, sigmoid_focal_loss

from vislab.layers import get_norm
from vislab.models.detection.anchors import AnchorGenerator
from vislab.models.detection.detector import PyramidDetector, default_image_sizes
from vislab.models.detection.nms import batched_nms

PRIOR_PROBABILITY = 0.01  # the classifier's initial foreground probability (RetinaNet, section 4.1)


def _tower(channels: int, *, num_convs: int, norm: str) -> nn.Sequential:
    layers: list[nn.Module] = []
    for _ in range(num_convs):
        conv = nn.Conv2d(channels, channels, 3, padding=1)
        nn.init.normal_(conv.weight, std=0.01)
        nn.init.zeros_(conv.bias)
        layers += [conv, get_norm(norm, channels), nn.ReLU()]
    return nn.Sequential(*layers)


def _predictor(channels: int, outputs: int, *, bias: float = 0.0) -> nn.Conv2d:
    conv = nn.Conv2d(channels, outputs, 3, padding=1)
    nn.init.normal_(conv.weight, std=0.01)
    nn.init.constant_(conv.bias, bias)
    return conv


class FCOSHead(nn.Module):
    """Shared over the levels: a classification tower (``num_convs`` x conv, norm, ReLU) and class
    logits; a regression tower and, from it, four distances (ReLU, in strides) and centre-ness."""

    def __init__(self, *, channels: int, num_classes: int, num_convs: int = 4, norm: str = "GN"):
        super().__init__()
        self.num_classes = num_classes
        self.classification = _tower(channels, num_convs=num_convs, norm=norm)
        self.cls_logits = _predictor(channels, num_classes,
                                     bias=-math.log((1 - PRIOR_PROBABILITY) / PRIOR_PROBABILITY))
        self.regression = _tower(channels, num_convs=num_convs, norm=norm)
        self.bbox_reg = _predictor(channels, 4)
        self.bbox_ctrness = _predictor(channels, 1)

    def forward(self, features: Sequence[torch.Tensor]) -> tuple[list[torch.Tensor], ...]:
        """Per level: class logits ``[B, HW, C]``, distances ``[B, HW, 4]``, centre-ness ``[B, HW]``."""
        logits, distances, centerness = [], [], []
        for x in features:
            cls_feature, reg_feature = self.classification(x), self.regression(x)
            logits.append(self.cls_logits(cls_feature).flatten(2).transpose(1, 2))
            distances.append(F.relu(self.bbox_reg(reg_feature)).flatten(2).transpose(1, 2))
            centerness.append(self.bbox_ctrness(reg_feature).flatten(2)[:, 0])
        return logits, distances, centerness


def decode(distances: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
    """Boxes from left, top, right, bottom distances in units of the anchor's size."""
    sizes = torch.cat([anchors[..., 2:] - anchors[..., :2]] * 2, dim=-1)
    centres = torch.cat([(anchors[..., :2] + anchors[..., 2:]) / 2] * 2, dim=-1)
    signs = distances.new_tensor([-1.0, -1.0, 1.0, 1.0])
    return centres + signs * distances.float() * sizes


def encode(boxes: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
    """The distances that ``decode`` turns into ``boxes``."""
    sizes = torch.cat([anchors[..., 2:] - anchors[..., :2]] * 2, dim=-1)
    centres = torch.cat([(anchors[..., :2] + anchors[..., 2:]) / 2] * 2, dim=-1)
    signs = boxes.new_tensor([-1.0, -1.0, 1.0, 1.0])
    return (boxes - centres) * signs / sizes


class FCOS(PyramidDetector):
    """``forward(images, image_sizes, targets)``: losses in training; in eval mode per image
    ``boxes`` (input pixels), ``scores`` and ``labels`` (0..C-1), the R-CNN's contract.

    Args:
        head: ``FCOSHead`` over every pyramid level.
        strides: the levels' strides (the points' anchor sizes).
        trunk: ``backbone``, ``fpn`` and the freezing options of ``PyramidDetector``.
    """

    def __init__(self, *, head: FCOSHead, center_sampling_radius: float = 1.5, score_threshold: float = 0.2,
                 nms_threshold: float = 0.6, detections_per_image: int = 100, topk_candidates: int = 1000,
                 focal_alpha: float = 0.25, focal_gamma: float = 2.0, **trunk):
        super().__init__(**trunk)
        strides = [spec.stride for spec in self.fpn.output_shape().values()]
        self.head = head
        self.num_classes = head.num_classes
        self.anchor_generator = AnchorGenerator(sizes=strides, strides=strides, aspect_ratios=(1.0,))
        self.center_sampling_radius = center_sampling_radius
        self.score_threshold = score_threshold
        self.nms_threshold = nms_threshold
        self.detections_per_image = detections_per_image
        self.topk_candidates = topk_candidates
        self.focal_alpha = focal_alpha
        self.focal_gamma = focal_gamma

    def forward(self, images: torch.Tensor, image_sizes: Sequence[tuple[int, int]] | None = None,
                targets: Sequence[dict] | None = None):
        image_sizes = default_image_sizes(images, image_sizes)
        if self.training and targets is None:
            raise ValueError("training a detector needs targets")
        features = list(self.pyramid(images).values())
        anchors = self.anchor_generator([f.shape[-2:] for f in features])
        if self.training:
            # Concatenated as they come out of the head, so that no per-level output outlives the
            # concatenation: the per-level class logits would stay alive through the focal loss,
            # the step's peak, one more [B, points, classes] tensor.
            logits, distances, centerness = (torch.cat(levels, dim=1) for levels in self.head(features))
            return self._losses(logits, distances, centerness, anchors, targets)
        return self._detections(*self.head(features), anchors, image_sizes)

    def dense_forward(self, images: torch.Tensor) -> tuple[list[torch.Tensor], ...]:
        """The network without target assignment or post-processing: what its operations count."""
        return self.head(list(self.pyramid(images).values()))

    @torch.no_grad()
    def match(self, anchors: list[torch.Tensor], boxes: torch.Tensor) -> torch.Tensor:
        """The matched box index of every point (-1: background), torchvision's rule."""
        points = torch.cat(anchors)
        if len(boxes) == 0:
            return torch.full((len(points),), -1, dtype=torch.int64, device=points.device)
        centres, sizes = (points[:, :2] + points[:, 2:]) / 2, points[:, 2] - points[:, 0]
        box_centres = (boxes[:, :2] + boxes[:, 2:]) / 2
        radius = self.center_sampling_radius * sizes[:, None]
        near_centre = (centres[:, None] - box_centres[None]).abs().amax(dim=2) < radius
        x, y = centres[:, None, 0], centres[:, None, 1]
        distances = torch.stack([x - boxes[:, 0], y - boxes[:, 1], boxes[:, 2] - x, boxes[:, 3] - y], dim=2)
        lower, upper = sizes * 4, sizes * 8
        lower[: len(anchors[0])] = 0
        upper[-len(anchors[-1]):] = float("inf")
        largest = distances.amax(dim=2)
        matched = near_centre & (distances.amin(dim=2) > 0) & (largest > lower[:, None]) & (largest < upper[:, None])
        areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        preference = matched.float() * (1e8 - areas[None])  # the smallest box among the matches
        best, index = preference.max(dim=1)
        index[best < 1e-5] = -1
        return index

    def _losses(self, logits: torch.Tensor, distances: torch.Tensor, centerness: torch.Tensor,
                anchors: list[torch.Tensor], targets: Sequence[dict]) -> dict[str, torch.Tensor]:
        points = torch.cat(anchors)
        class_targets = torch.zeros_like(logits, dtype=torch.float32)
        fg_boxes, fg_points, fg_rows = [], [], []
        for image, target in enumerate(targets):
            matches = self.match(anchors, target["boxes"])
            fg = torch.nonzero(matches >= 0).squeeze(1)
            class_targets[image, fg, target["labels"][matches[fg]]] = 1.0
            fg_boxes.append(target["boxes"][matches[fg]])
            fg_points.append(points[fg])
            fg_rows.append(image * len(points) + fg)
        rows = torch.cat(fg_rows)
        num_fg = max(1, rows.numel())
        gt_boxes, fg_points = torch.cat(fg_boxes).float(), torch.cat(fg_points)
        predicted = decode(distances.reshape(-1, 4)[rows], fg_points)
        gt_distances = encode(gt_boxes, fg_points)
        left_right, top_bottom = gt_distances[:, 0::2], gt_distances[:, 1::2]
        gt_centerness = torch.sqrt((left_right.amin(1) / left_right.amax(1))
                                   * (top_bottom.amin(1) / top_bottom.amax(1)))
        return {
            "loss_cls": sigmoid_focal_loss(logits.float(), class_targets, alpha=self.focal_alpha,
                                           gamma=self.focal_gamma, reduction="sum") / num_fg,
            "loss_box_reg": generalized_box_iou_loss(predicted, gt_boxes, reduction="sum") / num_fg,
            "loss_centerness": F.binary_cross_entropy_with_logits(centerness.reshape(-1)[rows].float(), gt_centerness,
                                                                  reduction="sum") / num_fg,
        }

    def _detections(self, logits: list[torch.Tensor], distances: list[torch.Tensor], centerness: list[torch.Tensor],
                    anchors: list[torch.Tensor], image_sizes: Sequence[tuple[int, int]]) -> list[dict]:
        detections = []
        for image, size in enumerate(image_sizes):
            boxes, scores, labels = [], [], []
            for level_logits, level_distances, level_centerness, level_anchors in zip(logits, distances, centerness,
                                                                                      anchors):
                level_scores = torch.sqrt(torch.sigmoid(level_logits[image].float())
                                          * torch.sigmoid(level_centerness[image].float())[:, None]).flatten()
                candidates = torch.nonzero(level_scores > self.score_threshold).squeeze(1)
                top_scores, order = level_scores[candidates].topk(min(self.topk_candidates, candidates.numel()))
                candidates = candidates[order]
                points = torch.div(candidates, self.num_classes, rounding_mode="floor")
                boxes.append(clip_boxes_to_image(decode(level_distances[image][points], level_anchors[points]),
                                                 tuple(size)))
                scores.append(top_scores)
                labels.append(candidates % self.num_classes)
            boxes, scores, labels = torch.cat(boxes), torch.cat(scores), torch.cat(labels)
            keep = batched_nms(boxes, scores, labels, self.nms_threshold)[: self.detections_per_image]
            detections.append({"boxes": boxes[keep], "scores": scores[keep], "labels": labels[keep]})
        return detections
