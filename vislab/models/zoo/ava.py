"""Registry entries for AVA action detectors: a Kinetics video trunk and an ``ActorRoIHead``.

The trunks are the Kinetics classifiers' (same builders' arguments, same ``backbone.*`` keys, so
``pretrained=`` a Kinetics classifier initialises them), with the changes the detectors make:

- ResNet trunks (Slow, SlowFast) and X3D: res5 not strided but dilated by 2, so its maps are at
  stride 16 (SlowFast paper, section 5.1; PySlowFast AVA configs ``SPATIAL_STRIDES`` /
  ``SPATIAL_DILATIONS``; pytorchvideo ``stage_conv_b_dilation``). The head reads res5 of each
  pathway.
- X3D: PySlowFast builds no X3D detector (its X3D leaves ``DETECTION.ENABLE`` unimplemented);
  vislab's reads ``conv5`` (table 1's 1x1x1 conv to the bottleneck width, 432 channels for
  X3D-M, with norm and ReLU) on the dilated res5, at stride 16, and builds no ``lin5``: the
  classification-only 2048-wide layer after global pooling has no place under RoI pooling.
- MViTv2: the last stage's tokens after the final LayerNorm, class token dropped, as a
  ``(N, C, T/2, H/32, W/32)`` map (PySlowFast ``MViT.forward`` with ``DETECTION.ENABLE``). The
  trunk is the Kinetics one, unchanged; PySlowFast publishes no MViT AVA config, and its head's
  box scale is ``1 / DETECTION.SPATIAL_SCALE_FACTOR`` (16 by default), which does not match a
  stride-32 trunk: vislab scales boxes by the trunk's real stride (32).

Head: 7x7 RoIAlign with dense sampling, ``aligned`` by default as PySlowFast
(``DETECTION.ALIGNED: True``; its Caffe2-era AVA configs and pytorchvideo's hub detectors use
False, which ``vislab convert --from pytorchvideo`` records), 7x7 max-pool, dropout 0.5, 80
outputs (``MODEL.NUM_CLASSES``: AVA v2.2's label ids 1..80; the evaluation scores the 60 in its
label map). The entries' clips are the test clips the figures are reported at: ``frames x
crop x crop`` (256 test crops for the ResNets, as PySlowFast's AVA ``TEST_CROP_SIZE``; 224 for
MViTv2 and X3D-M); an input box covering the whole frame is what ``vislab flops`` counts.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

from torch import nn

from vislab.models.backbones.mvit_video import VideoMViT
from vislab.models.backbones.resnet3d import ResNet3d
from vislab.models.backbones.slowfast import SlowFast
from vislab.models.backbones.x3d import X3D
from vislab.models.detection.actor_head import ActionDetector, ActorRoIHead
from vislab.models.registry_types import ModelEntry, Reference
from vislab.models.zoo.mvit_video import MVIT_V2
from vislab.models.zoo.video_cnn import R50_DEPTHS, R101_DEPTHS, SLOW

AVA_CLASSES = 80
SOURCE = "PySlowFast model zoo (AVA v2.2 frame mAP@0.5, 60 classes)"


def action_detector(backbone: nn.Module, *, feature_names: Sequence[str], num_classes: int, dropout: float,
                    roi_aligned: bool, norm_features: bool = False) -> ActionDetector:
    """``backbone`` with an ``ActorRoIHead`` on its maps ``feature_names`` (one per pathway),
    built for their channels and strides."""
    shapes = backbone.output_shape()
    head = ActorRoIHead(in_channels=[shapes[name].channels for name in feature_names],
                        strides=[shapes[name].stride for name in feature_names], num_classes=num_classes,
                        dropout=dropout, aligned=roi_aligned)
    return ActionDetector(backbone, head, feature_names=feature_names, norm_features=norm_features)


def ava_resnet3d_detector(*, num_classes: int, depths: Sequence[int] = R50_DEPTHS, stem_temporal_kernel: int = 1,
                          temporal_kernels: Sequence[Sequence[int]] = ((1,), (1,), (3,), (3,)),
                          temporal_pool: int = 1, width: float = 1.0, norm: str = "BN", norm_groups: int = 32,
                          zero_init_residual: bool = True, res5_dilation: int = 2, in_chans: int = 3,
                          dropout: float = 0.5, roi_aligned: bool = True) -> ActionDetector:
    """A Slow / I3D / C2D trunk (``ResNet3d``) with the RoI head on its res5."""
    backbone = ResNet3d(depths=depths, stem_temporal_kernel=stem_temporal_kernel, temporal_kernels=temporal_kernels,
                        temporal_pool=temporal_pool, width=width, norm=norm, norm_groups=norm_groups,
                        zero_init_residual=zero_init_residual, res5_dilation=res5_dilation, in_chans=in_chans)
    return action_detector(backbone, feature_names=("res5",), num_classes=num_classes, dropout=dropout,
                           roi_aligned=roi_aligned)


def ava_slowfast_detector(*, num_classes: int, alpha: int, fusion_kernel: int, depths: Sequence[int] = R50_DEPTHS,
                          beta_inv: int = 8, fusion_channel_ratio: int = 2,
                          slow_temporal_kernels: Sequence[Sequence[int]] = ((1,), (1,), (3,), (3,)),
                          fast_temporal_kernels: Sequence[Sequence[int]] = ((3,), (3,), (3,), (3,)),
                          slow_nonlocal_locations: Sequence[Sequence[int]] = ((), (), (), ()),
                          nonlocal_instantiation: str = "softmax", nonlocal_pool: Sequence[int] | None = (1, 2, 2),
                          width: float = 1.0, norm: str = "BN", norm_groups: int = 32,
                          zero_init_residual: bool = True, res5_dilation: int = 2, in_chans: int = 3,
                          dropout: float = 0.5, roi_aligned: bool = True) -> ActionDetector:
    """A SlowFast trunk with the RoI head on both pathways' res5 (Slow channels first)."""
    backbone = SlowFast(depths=depths, alpha=alpha, beta_inv=beta_inv, fusion_kernel=fusion_kernel,
                        fusion_channel_ratio=fusion_channel_ratio, slow_temporal_kernels=slow_temporal_kernels,
                        fast_temporal_kernels=fast_temporal_kernels, slow_nonlocal_locations=slow_nonlocal_locations,
                        nonlocal_instantiation=nonlocal_instantiation, nonlocal_pool=nonlocal_pool, width=width,
                        norm=norm, norm_groups=norm_groups, zero_init_residual=zero_init_residual,
                        res5_dilation=res5_dilation, in_chans=in_chans)
    return action_detector(backbone, feature_names=("slow_res5", "fast_res5"), num_classes=num_classes,
                           dropout=dropout, roi_aligned=roi_aligned)


def ava_x3d_detector(*, num_classes: int, depth_factor: float, width_factor: float = 2.0,
                     bottleneck_factor: float = 2.25, norm: str = "BN", norm_groups: int = 32,
                     zero_init_residual: bool = True, res5_dilation: int = 2, in_chans: int = 3,
                     dropout: float = 0.5, roi_aligned: bool = True) -> ActionDetector:
    """An X3D trunk without ``lin5`` and the RoI head on its ``conv5``."""
    backbone = X3D(width_factor=width_factor, depth_factor=depth_factor, bottleneck_factor=bottleneck_factor,
                   head_width=0, norm=norm, norm_groups=norm_groups, zero_init_residual=zero_init_residual,
                   res5_dilation=res5_dilation, in_chans=in_chans)
    return action_detector(backbone, feature_names=("conv5",), num_classes=num_classes, dropout=dropout,
                           roi_aligned=roi_aligned)


def ava_mvit_detector(*, num_classes: int, depths: Sequence[int], num_frames: int, pool_q_in_every_block: bool,
                      dim_mul_in_att: bool, residual_pooling: bool, rel_pos: bool, sep_pos_embed: bool,
                      pool_norm_eps: float, img_size: int = 224, embed_dim: int = 96, num_heads: int = 1,
                      pool_kernel: Sequence[int] = (3, 3, 3), kv_stride: Sequence[int] = (1, 8, 8),
                      mlp_ratio: float = 4.0, drop_path_rate: float = 0.0, in_chans: int = 3,
                      dropout: float = 0.5, roi_aligned: bool = True) -> ActionDetector:
    """A video MViT trunk (``VideoMViT``) with the RoI head on its normed last stage."""
    backbone = VideoMViT(depths=depths, embed_dim=embed_dim, num_heads=num_heads, num_frames=num_frames,
                         img_size=img_size, pool_kernel=pool_kernel, kv_stride=kv_stride,
                         pool_q_in_every_block=pool_q_in_every_block, dim_mul_in_att=dim_mul_in_att,
                         residual_pooling=residual_pooling, rel_pos=rel_pos, sep_pos_embed=sep_pos_embed,
                         pool_norm_eps=pool_norm_eps, mlp_ratio=mlp_ratio, drop_path_rate=drop_path_rate,
                         in_chans=in_chans)
    return action_detector(backbone, feature_names=("stage4",), num_classes=num_classes, dropout=dropout,
                           roi_aligned=roi_aligned, norm_features=True)


def _entry(name: str, *, family: str, builder: Callable[..., nn.Module], frames: int, crop: int,
           params: int | None = None, ava_map: float | None = None, source: str = SOURCE,
           **defaults: Any) -> ModelEntry:
    published = params is not None or ava_map is not None
    reference = Reference(params=params, gmacs=None, source=source, ava_map=ava_map) if published else None
    return ModelEntry(name=name, task="action_detection", family=family, builder=builder, defaults=defaults,
                      input_size=(3, frames, crop, crop), num_classes=AVA_CLASSES, reference=reference)


# PySlowFast SLOWFAST_32x2_R101_50_50 (the 29.1 model): temporal kernels in the first 6 of res4's
# 23 blocks of each pathway (NUM_BLOCK_TEMP_KERNEL [[3, 3], [4, 4], [6, 6], [3, 3]]) and
# dot-product non-local blocks after Slow res4 blocks 6, 13 and 20, pooled 2x2x2. Its trunk is not
# the Kinetics slowfast_r101_8x8's (pytorchvideo's layout: temporal kernels in all of res4, no
# non-local blocks); overriding these four options gives that trunk, which its weights initialise.
R101_50_50_RES4 = (3,) * 6 + (1,) * 17
R101_50_50 = dict(slow_temporal_kernels=((1,), (1,), R101_50_50_RES4, (3,)),
                  fast_temporal_kernels=((3,), (3,), R101_50_50_RES4, (3,)),
                  slow_nonlocal_locations=((), (), (6, 13, 20), ()), nonlocal_instantiation="dot_product",
                  nonlocal_pool=(2, 2, 2))

ENTRIES = (
    _entry("ava_slow_r50_4x16", family="ava_resnet3d", builder=ava_resnet3d_detector, frames=4, crop=256,
           params=31_798_416, ava_map=19.5, source=f"{SOURCE}, Kinetics-400 pre-training; params as "
           "pytorchvideo slow_r50_detection", **SLOW),
    _entry("ava_slowfast_r50_8x8", family="ava_slowfast", builder=ava_slowfast_detector, frames=32, crop=256,
           params=33_828_888, source="params as pytorchvideo slowfast_r50_detection", alpha=4, fusion_kernel=7),
    _entry("ava_slowfast_r101_8x8", family="ava_slowfast", builder=ava_slowfast_detector, frames=32, crop=256,
           ava_map=29.1, source=f"{SOURCE}, SLOWFAST_32x2_R101_50_50, Kinetics-600 pre-training",
           depths=R101_DEPTHS, alpha=4, fusion_kernel=5, **R101_50_50),
    # for 64-96 pixel clips on a CPU: slowfast_small's trunk (zoo/video_cnn.py), res5 at stride 16
    _entry("ava_slowfast_small", family="ava_slowfast", builder=ava_slowfast_detector, frames=16, crop=64,
           depths=(1, 1, 1, 1), width=0.5, alpha=4, beta_inv=4, fusion_kernel=5),
    _entry("ava_x3d_m", family="ava_x3d", builder=ava_x3d_detector, frames=16, crop=224, depth_factor=2.2),
    _entry("ava_mvitv2_s_16x4", family="ava_mvit_video", builder=ava_mvit_detector, frames=16, crop=224,
           ava_map=26.8, source="MViTv2 paper (centre crop)", num_frames=16,
           depths=(1, 2, 11, 2), **MVIT_V2),
    _entry("ava_mvitv2_b_32x3", family="ava_mvit_video", builder=ava_mvit_detector, frames=32, crop=224,
           ava_map=28.1, source="MViTv2 paper (centre crop)", num_frames=32,
           depths=(2, 3, 16, 3), **MVIT_V2),
)
