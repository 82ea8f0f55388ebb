"""Registry entries for Faster/Mask R-CNN with FPN over any vislab backbone.

``mask_rcnn_r50_fpn`` with 80 classes is detectron2's R50-FPN layout (44,343,216 parameters; the
FrozenBN statistics are buffers). Norm per part: the backbone (FrozenBN for fine-tuning, GN or
SyncBN from scratch), the FPN and the heads (``"none"``, GN, SyncBN).
"""
from __future__ import annotations

from functools import partial
from typing import Any, Sequence

from vislab.models.detection.heads import BoxHead, MaskHead
from vislab.models.detection.rcnn import GeneralizedRCNN
from vislab.models.detection.roi_heads import ROIHeads
from vislab.models.detection.rpn import RPN
from vislab.models.necks.fpn import FPN
from vislab.models.registry_types import ModelEntry, Reference


def build_backbone(name: str, *, norm: str, options: dict[str, Any] | None) -> Any:
    """The trunk of the classification model ``name`` (its head dropped), with ``norm``."""
    from vislab.models.registry import builder_arguments, create_model, get_entry

    options = dict(options or {})
    if "norm" in builder_arguments(get_entry(name)):
        options.setdefault("norm", norm)
    return create_model(name, num_classes=1, **options).backbone


def rcnn(*, num_classes: int = 80, backbone: str = "resnet50", backbone_options: dict | None = None,
         backbone_norm: str = "FrozenBN", freeze_at: int = 2, frozen_backbone: bool = False,
         fpn_features: Sequence[str] = ("res2", "res3", "res4", "res5"), fpn_channels: int = 256,
         fpn_norm: str = "none", fpn_output_convs: int = 1, head_norm: str = "none", box_head: str = "2fc",
         head_conv_dim: int = 256, head_fc_dim: int = 1024,
         mask: bool = True, anchor_sizes: Sequence[float] = (32, 64, 128, 256, 512),
         round_anchors: bool = False, roi_aligned: bool = True, roi_sampling_ratio: int = 0,
         rpn_pre_nms_topk: Sequence[int] = (2000, 1000), rpn_post_nms_topk: Sequence[int] = (1000, 1000),
         rpn_batch_size: int = 256, roi_batch_size: int = 512, score_threshold: float = 0.05,
         detections_per_image: int = 100) -> GeneralizedRCNN:
    """Faster R-CNN (``mask=False``) or Mask R-CNN with FPN.

    ``round_anchors=True, roi_aligned=False, roi_sampling_ratio=2`` reproduce torchvision's
    numerics (its converted weights give its detections); the defaults are detectron2's.
    """
    trunk = build_backbone(backbone, norm=backbone_norm, options=backbone_options)
    fpn = FPN(input_shapes=trunk.output_shape(), in_features=fpn_features, out_channels=fpn_channels,
              norm=fpn_norm, output_convs=fpn_output_convs)
    strides = [spec.stride for spec in fpn.output_shape().values()]
    if len(anchor_sizes) != len(strides):
        raise ValueError(f"anchor_sizes needs one size per FPN level ({len(strides)}), got {list(anchor_sizes)}")
    rpn = RPN(channels=fpn_channels, strides=strides, anchor_sizes=anchor_sizes, round_anchors=round_anchors,
              pre_nms_topk=tuple(rpn_pre_nms_topk), post_nms_topk=tuple(rpn_post_nms_topk),
              batch_size_per_image=rpn_batch_size)
    roi_strides = strides[:-1]  # P6 only serves the RPN
    roi_heads = ROIHeads(
        num_classes=num_classes, strides=roi_strides,
        box_head=BoxHead(channels=fpn_channels, resolution=7, kind=box_head, norm=head_norm,
                         conv_dim=head_conv_dim, fc_dim=head_fc_dim),
        mask_head=(MaskHead(channels=fpn_channels, num_classes=num_classes, norm=head_norm, conv_dim=head_conv_dim)
                   if mask else None),
        sampling_ratio=roi_sampling_ratio, aligned=roi_aligned, batch_size_per_image=roi_batch_size,
        score_threshold=score_threshold, detections_per_image=detections_per_image)
    return GeneralizedRCNN(backbone=trunk, fpn=fpn, rpn=rpn, roi_heads=roi_heads, freeze_at=freeze_at,
                           frozen_backbone=frozen_backbone)


def _entry(name: str, *, params: int | None = None, source: str = "", **defaults: Any) -> ModelEntry:
    reference = Reference(params=params, gmacs=None, source=source) if params is not None else None
    return ModelEntry(name=name, task="detection", family="rcnn", builder=rcnn, defaults=defaults,
                      input_size=(3, 800, 1216), num_classes=80, reference=reference)


_gn = partial(_entry, backbone_norm="GN", freeze_at=0, fpn_norm="GN", head_norm="GN", box_head="4conv1fc")

ENTRIES = (
    _entry("faster_rcnn_r50_fpn", mask=False),
    _entry("mask_rcnn_r50_fpn", params=44_343_216, source="detectron2 R50-FPN layout (../shared/reference)"),
    _entry("mask_rcnn_r101_fpn", backbone="resnet101"),
    _entry("mask_rcnn_x101_32x8d_fpn", backbone="resnext101_32x8d"),
    _gn("mask_rcnn_r50_fpn_gn"),
    _gn("mask_rcnn_r18_fpn_gn", backbone="resnet18"),
    # for small images on a CPU: half-width trunk, 64-channel FPN and heads, 2fc box head,
    # anchors from 8 pixels, fewer proposals and sampled regions. Shapes of 14-80 px (median 33)
    # all pool from P2 (stride 4), where a median box bin spans 1.2 feature pixels and a mask bin
    # 0.6: one sampling point per bin instead of four halves torchvision's CPU RoIAlign backward,
    # the largest single cost of a CPU training step (the shapes main job meets its AP targets
    # with it; its AP at four points under the same schedule was not measured).
    _gn("mask_rcnn_r18_fpn_gn_small", backbone="resnet18", backbone_options={"width": 0.5}, fpn_channels=64,
        head_conv_dim=64, head_fc_dim=256, box_head="2fc", anchor_sizes=(8, 16, 32, 64, 128),
        rpn_pre_nms_topk=(1000, 1000), rpn_post_nms_topk=(500, 500), roi_batch_size=128, roi_sampling_ratio=1),
)
