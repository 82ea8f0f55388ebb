"""Actor RoI head for AVA action detection over video trunks (SlowFast paper, section 5.1).

Each person box (from an external person detector, or the ground truth in training) is pooled
from the trunk's last feature maps and classified by one linear layer into multi-label actions:
per pathway, the map is averaged over time, RoIAlign extracts a 7x7 grid of the box, a 7x7
spatial max-pool reduces it to one vector; the pathways are concatenated, dropped out and
projected (PySlowFast ``head_helper.ResNetRoIHead``, pytorchvideo ``ResNetRoIHead``).

Forward contract of ``ActionDetector`` (what the ``action_detection`` task relies on)::

    model(clips, boxes) -> scores [K, num_classes]

- ``clips``: ``[N, 3, T, H, W]`` at the model's fastest frame rate (SlowFast picks its Slow
  frames itself), normalised as for the Kinetics trunk.
- ``boxes``: ``[K, 5]`` float rows ``(batch index, x1, y1, x2, y2)`` in input pixels of ``clips``
  (the keyframe's boxes, resized and cropped with the clip); row k belongs to clip
  ``boxes[k, 0]``; K may be 0.
- In training mode the scores are logits (for ``binary_cross_entropy_with_logits``); in eval
  mode they are sigmoid probabilities. ``model.num_classes`` is the number of columns.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn
from torchvision.ops import RoIAlign

ROI_RESOLUTION = 7  # PySlowFast DETECTION.ROI_XFORM_RESOLUTION


class ActorRoIHead(nn.Module):
    """Per pathway: temporal mean, RoIAlign (``resolution`` squared, ``spatial_scale`` 1 / stride,
    dense sampling), spatial max-pool over the grid; then concatenation, dropout, ``proj``.

    Args:
        in_channels, strides: channels and spatial stride of each pathway's feature map.
        num_classes: action classes (80 for AVA, of which 60 are evaluated).
        dropout: dropout rate before ``proj`` (0.5, PySlowFast ``MODEL.DROPOUT_RATE``).
        aligned: RoIAlign's half-pixel correction (PySlowFast ``DETECTION.ALIGNED``, True by
            default; its Caffe2-converted configs and pytorchvideo's hub models use False).
        resolution: RoIAlign output side (7).
    """

    def __init__(self, *, in_channels: Sequence[int], strides: Sequence[int], num_classes: int,
                 dropout: float = 0.5, aligned: bool = True, resolution: int = ROI_RESOLUTION):
        super().__init__()
        if len(in_channels) != len(strides):
            raise ValueError(f"one stride per pathway: {len(in_channels)} channel counts, {len(strides)} strides")
        self.rois = nn.ModuleList(RoIAlign(resolution, spatial_scale=1.0 / stride, sampling_ratio=0, aligned=aligned)
                                  for stride in strides)
        self.spatial_pool = nn.MaxPool2d(resolution, stride=1)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.proj = nn.Linear(sum(in_channels), num_classes)
        nn.init.normal_(self.proj.weight, std=0.01)  # PySlowFast MODEL.FC_INIT_STD
        nn.init.zeros_(self.proj.bias)

    def forward(self, features: Sequence[torch.Tensor], boxes: torch.Tensor) -> torch.Tensor:
        """``features``: one ``(N, C, T, H, W)`` map per pathway; ``boxes``: ``(K, 5)`` rows of
        (batch index, x1, y1, x2, y2) in input pixels. Logits in training, probabilities in eval."""
        pooled = [self.spatial_pool(roi(feature.mean(dim=2), boxes.to(feature.dtype))).flatten(1)
                  for roi, feature in zip(self.rois, features)]
        logits = self.proj(self.dropout(torch.cat(pooled, dim=1)))
        return logits if self.training else torch.sigmoid(logits)


class ActionDetector(nn.Module):
    """A video trunk (kept as ``backbone``, keys as in the Kinetics classifiers) and an
    ``ActorRoIHead`` on its maps ``feature_names``; see the module docstring for the forward
    contract.

    Args:
        backbone: a trunk with ``forward_features`` and ``output_shape``.
        head: the RoI head, built for the channels and strides of ``feature_names``.
        feature_names: the maps the head reads, one per pathway (e.g. ``slow_res5``,
            ``fast_res5``).
        norm_features: apply the trunk's final LayerNorm (``backbone.norm``) to each map's tokens
            first, as PySlowFast's MViT detection branch does.
    """

    def __init__(self, backbone: nn.Module, head: ActorRoIHead, *, feature_names: Sequence[str],
                 norm_features: bool = False):
        super().__init__()
        shapes = backbone.output_shape()
        missing = [name for name in feature_names if name not in shapes]
        if missing:
            raise ValueError(f"the trunk has no maps {missing}; it has {list(shapes)}")
        self.backbone = backbone
        self.head = head
        self.feature_names = tuple(feature_names)
        self.norm_features = norm_features

    @property
    def num_classes(self) -> int:
        return self.head.proj.out_features

    def forward(self, clips: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        if boxes.dim() != 2 or boxes.shape[1] != 5:
            raise ValueError(f"boxes must be (K, 5) rows of (batch index, x1, y1, x2, y2), got {tuple(boxes.shape)}")
        features = self.backbone.forward_features(clips)
        maps = [features[name] for name in self.feature_names]
        if self.norm_features:
            maps = [self.backbone.norm(m.movedim(1, -1)).movedim(-1, 1) for m in maps]
        return self.head(maps, boxes)

    def forward_whole_frames(self, clips: torch.Tensor) -> torch.Tensor:
        """Scores of one box covering each clip's whole frame (what ``vislab flops`` counts)."""
        n, _, _, height, width = clips.shape
        boxes = torch.tensor([0.0, 0.0, 0.0, width, height], device=clips.device).repeat(n, 1)
        boxes[:, 0] = torch.arange(n, device=clips.device)
        return self(clips, boxes)

    def no_weight_decay(self) -> set[str]:
        """The trunk's parameters exempt from weight decay (MViT's class token, relative positions)."""
        return {f"backbone.{name}" for name in getattr(self.backbone, "no_weight_decay", set)()}
