"""Region Proposal Network (Ren et al., 2015, section 3.1) over a feature pyramid (FPN section 4.1):
one shared head slides over every level; each level has anchors of one size."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn
from torch.nn import functional as F
from torchvision.ops import box_iou, clip_boxes_to_image, remove_small_boxes

from vislab.models.detection.anchors import AnchorGenerator
from vislab.models.detection.box_coder import BoxCoder
from vislab.models.detection.matcher import Matcher, sample_labels
from vislab.models.detection.nms import batched_nms


class RPNHead(nn.Module):
    """``num_convs`` 3x3 conv + ReLU layers (one in Faster R-CNN; two in ViTDet and MViTv2's
    detectors, after the TPU detection models), then per anchor an objectness logit and four
    box deltas. One conv is ``conv``; several are ``conv`` as a Sequential of conv, ReLU, conv."""

    def __init__(self, *, channels: int, num_anchors: int, num_convs: int = 1):
        super().__init__()
        if num_convs < 1:
            raise ValueError(f"the RPN head needs at least one conv, got num_convs={num_convs}")
        convs = [nn.Conv2d(channels, channels, 3, padding=1) for _ in range(num_convs)]
        layers: list[nn.Module] = []
        for conv in convs:
            layers += [conv, nn.ReLU(inplace=True)]
        self.conv = convs[0] if num_convs == 1 else nn.Sequential(*layers[:-1])  # the last ReLU is in forward
        self.objectness = nn.Conv2d(channels, num_anchors, 1)
        self.deltas = nn.Conv2d(channels, 4 * num_anchors, 1)
        for layer in (*convs, self.objectness, self.deltas):
            nn.init.normal_(layer.weight, std=0.01)
            nn.init.zeros_(layer.bias)

    def forward(self, features: Sequence[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Per level: objectness [B, H*W*A] and deltas [B, H*W*A, 4], position-major like the anchors."""
        objectness, deltas = [], []
        for x in features:
            x = F.relu(self.conv(x), inplace=True)  # the conv's backward needs its input only
            b, _, h, w = x.shape
            objectness.append(self.objectness(x).permute(0, 2, 3, 1).reshape(b, -1))
            deltas.append(self.deltas(x).view(b, -1, 4, h, w).permute(0, 3, 4, 1, 2).reshape(b, -1, 4))
        return objectness, deltas


class RPN(nn.Module):
    """Proposals and, in training, the RPN losses.

    Proposals: per level and image the ``pre_nms_topk`` highest-scoring anchors, decoded and
    clipped, boxes narrower than ``min_box_size`` dropped, NMS per level at ``nms_threshold``, the
    best ``post_nms_topk`` kept per image. Losses: anchors matched to ground truth at IoU 0.3/0.7
    (plus each box's best anchors), 256 sampled per image, half positive at most; binary
    cross-entropy on objectness and L1 on the positives' deltas, both normalised by the number
    of sampled anchors (detectron2's convention).
    """

    def __init__(self, *, channels: int, strides: Sequence[int], anchor_sizes: Sequence[float],
                 aspect_ratios: Sequence[float] = (0.5, 1.0, 2.0), round_anchors: bool = False, num_convs: int = 1,
                 pre_nms_topk: tuple[int, int] = (2000, 1000), post_nms_topk: tuple[int, int] = (1000, 1000),
                 nms_threshold: float = 0.7, min_box_size: float = 1e-3,
                 iou_thresholds: tuple[float, float] = (0.3, 0.7), batch_size_per_image: int = 256,
                 positive_fraction: float = 0.5):
        super().__init__()
        self.anchor_generator = AnchorGenerator(sizes=anchor_sizes, strides=strides,
                                                aspect_ratios=aspect_ratios, round_corners=round_anchors)
        self.head = RPNHead(channels=channels, num_anchors=len(aspect_ratios), num_convs=num_convs)
        self.box_coder = BoxCoder(weights=(1.0, 1.0, 1.0, 1.0))
        self.matcher = Matcher(thresholds=iou_thresholds, allow_low_quality=True)
        self.pre_nms_topk = pre_nms_topk  # (training, inference), per level
        self.post_nms_topk = post_nms_topk  # (training, inference), per image
        self.nms_threshold = nms_threshold
        self.min_box_size = min_box_size
        self.batch_size_per_image = batch_size_per_image
        self.positive_fraction = positive_fraction

    def forward(self, features: Sequence[torch.Tensor], image_sizes: Sequence[tuple[int, int]],
                targets: Sequence[dict] | None = None) -> tuple[list[torch.Tensor], dict[str, torch.Tensor]]:
        objectness, deltas = self.head(features)
        anchors = self.anchor_generator([f.shape[-2:] for f in features])
        proposals = self._proposals(anchors, objectness, deltas, image_sizes)
        losses = {}
        if self.training:
            losses = self._losses(torch.cat(anchors), torch.cat(objectness, dim=1),
                                  torch.cat(deltas, dim=1), targets)
        return proposals, losses

    @torch.no_grad()
    def _proposals(self, anchors: list[torch.Tensor], objectness: list[torch.Tensor],
                   deltas: list[torch.Tensor], image_sizes: Sequence[tuple[int, int]]) -> list[torch.Tensor]:
        phase = 0 if self.training else 1
        batch = objectness[0].shape[0]
        scores, boxes, levels = [], [], []
        for level, (level_anchors, level_logits, level_deltas) in enumerate(zip(anchors, objectness, deltas)):
            k = min(self.pre_nms_topk[phase], level_logits.shape[1])
            top_logits, top = level_logits.topk(k, dim=1)
            chosen_deltas = torch.gather(level_deltas, 1, top[..., None].expand(-1, -1, 4))
            decoded = self.box_coder.decode(chosen_deltas.reshape(-1, 4), level_anchors[top.reshape(-1)])
            scores.append(top_logits)
            boxes.append(decoded.view(batch, k, 4))
            levels.append(torch.full((k,), level, dtype=torch.int64, device=top.device))
        scores, boxes, levels = torch.cat(scores, dim=1).sigmoid(), torch.cat(boxes, dim=1), torch.cat(levels)
        proposals = []
        for image_scores, image_boxes, size in zip(scores, boxes, image_sizes):
            image_boxes = clip_boxes_to_image(image_boxes, tuple(size))
            keep = remove_small_boxes(image_boxes, self.min_box_size)
            keep = keep[torch.isfinite(image_boxes[keep]).all(dim=1)]
            keep = keep[batched_nms(image_boxes[keep], image_scores[keep], levels[keep], self.nms_threshold)]
            proposals.append(image_boxes[keep[: self.post_nms_topk[phase]]])
        return proposals

    def _losses(self, anchors: torch.Tensor, objectness: torch.Tensor, deltas: torch.Tensor,
                targets: Sequence[dict]) -> dict[str, torch.Tensor]:
        labels, target_deltas = [], []
        for target in targets:
            gt_boxes = target["boxes"]
            matches, match_labels = self.matcher(box_iou(gt_boxes, anchors))
            image_labels = torch.full_like(matches, -1)
            pos, neg = sample_labels(match_labels.long(), num_samples=self.batch_size_per_image,
                                     positive_fraction=self.positive_fraction)
            image_labels[pos], image_labels[neg] = 1, 0
            labels.append(image_labels)
            matched = gt_boxes[matches] if len(gt_boxes) else torch.zeros_like(anchors)
            target_deltas.append(self.box_coder.encode(matched, anchors))
        labels, target_deltas = torch.stack(labels), torch.stack(target_deltas)
        sampled = labels >= 0
        positive = labels == 1
        normaliser = self.batch_size_per_image * len(targets)
        return {
            "loss_rpn_cls": F.binary_cross_entropy_with_logits(
                objectness[sampled].float(), labels[sampled].float(), reduction="sum") / normaliser,
            "loss_rpn_loc": F.l1_loss(deltas[positive].float(), target_deltas[positive], reduction="sum") / normaliser,
        }
