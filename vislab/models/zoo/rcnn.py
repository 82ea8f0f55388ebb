"""Registry entries for Faster/Mask/Cascade R-CNN over any vislab classification trunk, with an
FPN or NAS-FPN neck; ``build_rcnn`` assembles RPN and ROI heads for any trunk and neck (the ViT
detectors in ``zoo/vitdet.py`` use it too).

``mask_rcnn_r50_fpn`` with 80 classes is detectron2's R50-FPN layout (44,343,216 parameters; the
FrozenBN statistics are buffers). Norm per part: the backbone (FrozenBN for fine-tuning, GN or
SyncBN from scratch), the FPN and the heads (``"none"``, GN, SyncBN, LN). The MViTv2 detectors
are detectron2's ``projects/MViTv2`` configs (parameters counted by building them).
"""
from __future__ import annotations

from functools import partial
from typing import Any, Sequence

from torch import nn

from vislab.models.detection.cascade import STAGE_IOUS, CascadeROIHeads
from vislab.models.detection.heads import BoxHead, MaskHead
from vislab.models.detection.rcnn import GeneralizedRCNN
from vislab.models.detection.roi_heads import ROIHeads
from vislab.models.detection.rpn import RPN
from vislab.models.necks.fpn import FPN
from vislab.models.necks.nasfpn import NASFPN
from vislab.models.registry_types import ModelEntry, Reference

NECKS = ("fpn", "nasfpn")


def build_backbone(name: str, *, norm: str, options: dict[str, Any] | None) -> Any:
    """The trunk of the classification model ``name`` (its head dropped), with ``norm``."""
    from vislab.models.registry import builder_arguments, create_model, get_entry

    options = dict(options or {})
    if "norm" in builder_arguments(get_entry(name)):
        options.setdefault("norm", norm)
    return create_model(name, num_classes=1, **options).backbone


def build_rcnn(*, trunk: nn.Module, neck: nn.Module, num_classes: int, roi_levels: Sequence[str] | None = None,
               rpn_convs: int = 1, anchor_sizes: Sequence[float], round_anchors: bool,
               rpn_pre_nms_topk: Sequence[int], rpn_post_nms_topk: Sequence[int], rpn_batch_size: int,
               head_norm: str, box_head: str, head_conv_dim: int, head_fc_dim: int, mask: bool, cascade: bool,
               cascade_ious: Sequence[float], roi_aligned: bool, roi_sampling_ratio: int, roi_batch_size: int,
               score_threshold: float, detections_per_image: int, freeze_at: int = 0,
               frozen_backbone: bool = False, square_pad: int = 0) -> GeneralizedRCNN:
    """RPN and ROI heads (standard or Cascade, with or without masks) on ``neck`` over ``trunk``."""
    shapes = neck.output_shape()
    channels = {spec.channels for spec in shapes.values()}
    if len(channels) != 1:
        raise ValueError(f"the RPN and ROI heads need one width on every pyramid level, got {shapes}")
    width = channels.pop()
    strides = [spec.stride for spec in shapes.values()]
    if len(anchor_sizes) != len(strides):
        raise ValueError(f"anchor_sizes needs one size per pyramid level ({len(strides)}), got {list(anchor_sizes)}")
    levels = list(roi_levels) if roi_levels is not None else [name for name in shapes if name != "p6"]
    rpn = RPN(channels=width, strides=strides, anchor_sizes=anchor_sizes, round_anchors=round_anchors,
              num_convs=rpn_convs, pre_nms_topk=tuple(rpn_pre_nms_topk), post_nms_topk=tuple(rpn_post_nms_topk),
              batch_size_per_image=rpn_batch_size)
    make_box_head = partial(BoxHead, channels=width, resolution=7, kind=box_head, norm=head_norm,
                            conv_dim=head_conv_dim, fc_dim=head_fc_dim)
    common = dict(num_classes=num_classes, strides=[shapes[name].stride for name in levels],
                  mask_head=(MaskHead(channels=width, num_classes=num_classes, norm=head_norm, conv_dim=head_conv_dim)
                             if mask else None),
                  sampling_ratio=roi_sampling_ratio, aligned=roi_aligned, batch_size_per_image=roi_batch_size,
                  score_threshold=score_threshold, detections_per_image=detections_per_image)
    if cascade:
        roi_heads = CascadeROIHeads(box_heads=[make_box_head() for _ in cascade_ious], stage_ious=cascade_ious,
                                    **common)
    else:
        roi_heads = ROIHeads(box_head=make_box_head(), **common)
    return GeneralizedRCNN(backbone=trunk, fpn=neck, rpn=rpn, roi_heads=roi_heads, roi_levels=levels,
                           freeze_at=freeze_at, frozen_backbone=frozen_backbone, square_pad=square_pad)


def rcnn(*, num_classes: int = 80, backbone: str = "resnet50", backbone_options: dict | None = None,
         backbone_norm: str = "FrozenBN", freeze_at: int = 2, frozen_backbone: bool = False, neck: str = "fpn",
         fpn_features: Sequence[str] = ("res2", "res3", "res4", "res5"), fpn_channels: int = 256,
         fpn_norm: str = "none", fpn_in_norm: str = "none", fpn_output_convs: int = 1, nasfpn_repeats: int = 5,
         head_norm: str = "none", box_head: str = "2fc", head_conv_dim: int = 256, head_fc_dim: int = 1024,
         mask: bool = True, cascade: bool = False, cascade_ious: Sequence[float] = STAGE_IOUS, rpn_convs: int = 1,
         anchor_sizes: Sequence[float] = (32, 64, 128, 256, 512),
         round_anchors: bool = False, roi_aligned: bool = True, roi_sampling_ratio: int = 0,
         rpn_pre_nms_topk: Sequence[int] = (2000, 1000), rpn_post_nms_topk: Sequence[int] = (1000, 1000),
         rpn_batch_size: int = 256, roi_batch_size: int = 512, score_threshold: float = 0.05,
         detections_per_image: int = 100) -> GeneralizedRCNN:
    """Faster R-CNN (``mask=False``), Mask R-CNN or Cascade Mask R-CNN (``cascade``) with an FPN
    (``neck="fpn"``: p2..p6, the ROI heads pool from p2..p5) or NAS-FPN (``neck="nasfpn"``,
    ``nasfpn_repeats`` repeats over ``fpn_features`` at strides 8-32: p3..p7, all pooled).

    ``round_anchors=True, roi_aligned=False, roi_sampling_ratio=2`` reproduce torchvision's
    numerics (its converted weights give its detections); the defaults are detectron2's.
    """
    if neck not in NECKS:
        raise ValueError(f"neck={neck!r} is not one of {', '.join(NECKS)}")
    trunk = build_backbone(backbone, norm=backbone_norm, options=backbone_options)
    if neck == "fpn":
        pyramid = FPN(input_shapes=trunk.output_shape(), in_features=fpn_features, out_channels=fpn_channels,
                      norm=fpn_norm, output_convs=fpn_output_convs, in_norm=fpn_in_norm)
        roi_levels = None
    else:
        pyramid = NASFPN(input_shapes=trunk.output_shape(), in_features=fpn_features, channels=fpn_channels,
                         num_repeats=nasfpn_repeats, norm=fpn_norm)
        roi_levels = list(pyramid.output_shape())
    return build_rcnn(trunk=trunk, neck=pyramid, num_classes=num_classes, roi_levels=roi_levels, rpn_convs=rpn_convs,
                      anchor_sizes=anchor_sizes, round_anchors=round_anchors, rpn_pre_nms_topk=rpn_pre_nms_topk,
                      rpn_post_nms_topk=rpn_post_nms_topk, rpn_batch_size=rpn_batch_size, head_norm=head_norm,
                      box_head=box_head, head_conv_dim=head_conv_dim, head_fc_dim=head_fc_dim, mask=mask,
                      cascade=cascade, cascade_ious=cascade_ious, roi_aligned=roi_aligned,
                      roi_sampling_ratio=roi_sampling_ratio, roi_batch_size=roi_batch_size,
                      score_threshold=score_threshold, detections_per_image=detections_per_image,
                      freeze_at=freeze_at, frozen_backbone=frozen_backbone)


def _entry(name: str, *, params: int | None = None, source: str = "", box_ap: float | None = None,
           mask_ap: float | None = None, **defaults: Any) -> ModelEntry:
    reference = (Reference(params=params, gmacs=None, source=source, box_ap=box_ap, mask_ap=mask_ap)
                 if params is not None or box_ap is not None else None)
    return ModelEntry(name=name, task="detection", family="rcnn", builder=rcnn, defaults=defaults,
                      input_size=(3, 800, 1216), num_classes=80, reference=reference)


_gn = partial(_entry, backbone_norm="GN", freeze_at=0, fpn_norm="GN", head_norm="GN", box_head="4conv1fc")
# detectron2 projects/MViTv2: hybrid window attention, a LayerNorm on each trunk output; the cascade
# models add a 2-conv RPN and 4conv1fc heads with SyncBN
_mvitv2 = partial(_entry, fpn_features=("stage1", "stage2", "stage3", "stage4"), fpn_in_norm="LN", freeze_at=0,
                  source="detectron2 projects/MViTv2 config, counted by building it")
_mvitv2_cascade = partial(_mvitv2, cascade=True, rpn_convs=2, box_head="4conv1fc", head_norm="SyncBN")
# frozen backbone with the heavier decoder of Vasconcelos et al. (2022): NAS-FPN (5 repeats) over
# res3..res5, Cascade at IoU 0.5 / 0.7 / 0.8, SyncBN in the neck and heads
_frozen_nasfpn = partial(_entry, frozen_backbone=True, freeze_at=0, neck="nasfpn",
                         fpn_features=("res3", "res4", "res5"), fpn_norm="SyncBN", head_norm="SyncBN",
                         box_head="4conv1fc", cascade=True, cascade_ious=(0.5, 0.7, 0.8), rpn_convs=2)

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
    _mvitv2("mask_rcnn_mvitv2_t", backbone="mvitv2_tiny", params=43_679_568, box_ap=48.3, mask_ap=43.8,
            backbone_options={"window_size": 56, "drop_path_rate": 0.2, "final_norm": False}),
    _mvitv2_cascade("cascade_mask_rcnn_mvitv2_t", backbone="mvitv2_tiny", params=75_847_614, box_ap=52.2,
                    mask_ap=45.0, backbone_options={"window_size": 56, "drop_path_rate": 0.2, "final_norm": False}),
    _mvitv2_cascade("cascade_mask_rcnn_mvitv2_s", backbone="mvitv2_small", params=86_544_510, box_ap=53.2,
                    mask_ap=46.0, backbone_options={"window_size": 56, "drop_path_rate": 0.2, "final_norm": False}),
    _mvitv2_cascade("cascade_mask_rcnn_mvitv2_b", backbone="mvitv2_base", params=103_147_038, box_ap=54.1,
                    mask_ap=46.7, backbone_options={"window_size": 56, "drop_path_rate": 0.4, "final_norm": False}),
    # ConvNeXt (Liu et al., 2022, table 3): Mask R-CNN 3x, a LayerNorm on each stage output
    _entry("mask_rcnn_convnext_t_fpn", backbone="convnext_tiny",
           backbone_options={"drop_path_rate": 0.4, "final_norm": False},
           fpn_features=("stage1", "stage2", "stage3", "stage4"), fpn_in_norm="LN", freeze_at=0,
           box_ap=46.2, mask_ap=41.7, source="ConvNeXt paper table 3 (Mask R-CNN 3x)"),
    _frozen_nasfpn("cascade_mask_rcnn_r50_nasfpn_frozen", backbone="resnet50"),
    _frozen_nasfpn("cascade_mask_rcnn_r101_nasfpn_frozen", backbone="resnet101"),
)
