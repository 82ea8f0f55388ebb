"""Registry entries for detectors on a plain ViT: ViTDet (Li et al., 2022) with its simple feature
pyramid, and the detection-transfer benchmark of Li et al. (2021) with a multi-scale adaptor and
an FPN. Both use window attention with a few global blocks at a fixed square input (1024).

The ViTDet entries are detectron2's ``projects/ViTDet`` LazyConfigs (80 classes; counted by
building them): 2-conv RPN, 4conv1fc box head and mask head with LayerNorm, the trunk's position
table of the 224-pixel pre-training grid with a class-token slot, relative-position tables for
1024 input. The benchmark entries (ViT-B/L, section 2 of Li et al.) use absolute positions only:
the paper's relative position biases are full BEiT-style tables (+0.2-0.3 AP); vislab offers
ViTDet's decomposed form instead (``rel_pos=true``).
"""
from __future__ import annotations

from functools import partial
from typing import Any, Sequence

from vislab.models.backbones.vit import VisionTransformer
from vislab.models.detection.cascade import STAGE_IOUS
from vislab.models.detection.rcnn import GeneralizedRCNN
from vislab.models.necks.simple_pyramid import SCALES, SimpleFeaturePyramid
from vislab.models.necks.vit_adaptor import ViTAdaptorFPN, quarter_blocks
from vislab.models.registry_types import ModelEntry, Reference
from vislab.models.zoo.rcnn import build_rcnn

NECKS = ("simple_pyramid", "multiscale_fpn")


def vitdet(*, num_classes: int = 80, patch_size: int = 16, embed_dim: int = 768, depth: int = 12,
           num_heads: int = 12, mlp_ratio: float = 4.0, drop_path_rate: float = 0.1, img_size: int = 1024,
           pretrain_img_size: int = 224, window_size: int = 14, global_blocks: Sequence[int] | None = None,
           rel_pos: bool = True, residual_blocks: Sequence[int] = (),
           neck: str = "simple_pyramid", neck_channels: int = 256, neck_norm: str = "LN",
           pyramid_scales: Sequence[float] = SCALES, adaptor_norm: str = "GN",
           head_norm: str = "LN", box_head: str = "4conv1fc", head_conv_dim: int = 256, head_fc_dim: int = 1024,
           mask: bool = True, cascade: bool = False, cascade_ious: Sequence[float] = STAGE_IOUS,
           rpn_convs: int = 2, anchor_sizes: Sequence[float] = (32, 64, 128, 256, 512),
           rpn_pre_nms_topk: Sequence[int] = (2000, 1000), rpn_post_nms_topk: Sequence[int] = (1000, 1000),
           rpn_batch_size: int = 256, roi_batch_size: int = 512, roi_sampling_ratio: int = 0,
           score_threshold: float = 0.05, detections_per_image: int = 100) -> GeneralizedRCNN:
    """A plain-ViT Mask R-CNN (or Cascade, ``cascade``) at a square ``img_size`` input.

    ``global_blocks`` default to blocks d/4, d/2, 3d/4 and d (ViT-B: 2, 5, 8, 11); with
    ``neck="simple_pyramid"`` (ViTDet) the pyramid comes from the last map at ``pyramid_scales``, with
    ``neck="multiscale_fpn"`` (Li et al., 2021) from those four blocks through the adaptor and an
    FPN normalised with ``neck_norm``. Images are padded to ``img_size`` x ``img_size``.
    """
    if neck not in NECKS:
        raise ValueError(f"neck={neck!r} is not one of {', '.join(NECKS)}")
    quarters = quarter_blocks(depth)
    trunk = VisionTransformer(
        patch_size=patch_size, embed_dim=embed_dim, depth=depth, num_heads=num_heads, mlp_ratio=mlp_ratio,
        class_token=False, global_pool="avg", drop_path_rate=drop_path_rate, img_size=img_size,
        out_blocks=quarters if neck == "multiscale_fpn" else (), window_size=window_size,
        global_blocks=quarters if global_blocks is None else global_blocks, rel_pos=rel_pos,
        residual_blocks=residual_blocks, final_norm=False, pretrain_img_size=pretrain_img_size,
        pretrain_class_token=True, pos_resize_antialias=False)
    if neck == "simple_pyramid":
        pyramid = SimpleFeaturePyramid(input_shapes=trunk.output_shape(), out_channels=neck_channels,
                                       scales=pyramid_scales, norm=neck_norm)
    else:
        pyramid = ViTAdaptorFPN(input_shapes=trunk.output_shape(), in_features=[f"block{i}" for i in quarters],
                                out_channels=neck_channels, adaptor_norm=adaptor_norm, fpn_norm=neck_norm)
    return build_rcnn(trunk=trunk, neck=pyramid, num_classes=num_classes, rpn_convs=rpn_convs,
                      anchor_sizes=anchor_sizes, round_anchors=False, rpn_pre_nms_topk=rpn_pre_nms_topk,
                      rpn_post_nms_topk=rpn_post_nms_topk, rpn_batch_size=rpn_batch_size, head_norm=head_norm,
                      box_head=box_head, head_conv_dim=head_conv_dim, head_fc_dim=head_fc_dim, mask=mask,
                      cascade=cascade, cascade_ious=cascade_ious, roi_aligned=True,
                      roi_sampling_ratio=roi_sampling_ratio, roi_batch_size=roi_batch_size,
                      score_threshold=score_threshold, detections_per_image=detections_per_image,
                      square_pad=img_size)


def _entry(name: str, *, params: int | None = None, box_ap: float | None = None, mask_ap: float | None = None,
           source: str = "detectron2 projects/ViTDet LazyConfig, counted by building it",
           **defaults: Any) -> ModelEntry:
    reference = (Reference(params=params, gmacs=None, source=source, box_ap=box_ap, mask_ap=mask_ap)
                 if params is not None or box_ap is not None else None)
    image = defaults.get("img_size", 1024)
    return ModelEntry(name=name, task="detection", family="vitdet", builder=vitdet, defaults=defaults,
                      input_size=(3, image, image), num_classes=80, reference=reference)


_large = dict(embed_dim=1024, depth=24, num_heads=16, drop_path_rate=0.4)
_huge = dict(embed_dim=1280, depth=32, num_heads=16, drop_path_rate=0.5)
_cascade = partial(_entry, cascade=True)
# Li et al. (2021): adaptor + FPN, SyncBN in the FPN and heads, absolute positions only
_benchmark = partial(_entry, neck="multiscale_fpn", rel_pos=False, neck_norm="SyncBN", head_norm="SyncBN",
                     source="Li et al. 2021, table 1 (MAE initialisation); MAE paper table 4")

ENTRIES = (
    _entry("mask_rcnn_vitdet_b", params=110_895_792, box_ap=51.6, mask_ap=45.9),
    _entry("mask_rcnn_vitdet_l", params=330_684_656, box_ap=55.5, mask_ap=49.2, **_large),
    _entry("mask_rcnn_vitdet_h", params=661_203_760, box_ap=56.7, mask_ap=50.2, **_huge),
    _cascade("cascade_mask_rcnn_vitdet_b", params=141_160_990, box_ap=54.0, mask_ap=46.7),
    _cascade("cascade_mask_rcnn_vitdet_l", params=360_949_854, box_ap=57.6, mask_ap=50.0, **_large),
    _cascade("cascade_mask_rcnn_vitdet_h", params=691_468_958, box_ap=58.7, mask_ap=51.0, **_huge),
    _benchmark("mask_rcnn_vit_b_benchmark", box_ap=50.3, mask_ap=44.9),
    # for the shapes set on a CPU: a 6-block, 192-wide ViT on 8-pixel patches at 160x160 (the trunk
    # of mae_vit_tiny_p8), windows of 5 tokens with global blocks 2 and 5, a pyramid at strides
    # 4-32 from its stride-8 map, and the small heads of mask_rcnn_r18_fpn_gn_small (2fc box head:
    # 4conv1fc took 40% of a CPU training step here)
    _entry("mask_rcnn_vitdet_tiny_p8", source="", img_size=160, pretrain_img_size=160, patch_size=8,
           embed_dim=192, depth=6, num_heads=3, window_size=5, global_blocks=(2, 5),
           pyramid_scales=(2.0, 1.0, 0.5, 0.25), neck_channels=64, head_conv_dim=64, head_fc_dim=256, box_head="2fc",
           anchor_sizes=(8, 16, 32, 64, 128), rpn_pre_nms_topk=(1000, 1000), rpn_post_nms_topk=(500, 500),
           roi_batch_size=128, roi_sampling_ratio=1),
    _benchmark("mask_rcnn_vit_l_benchmark", box_ap=53.3, mask_ap=47.2, **{**_large, "drop_path_rate": 0.3}),
)
