"""Registry entries for video MViT (v1) and MViTv2 Kinetics-400 classifiers.

A name gives the clip: 16x4 is 16 frames sampled every 4th, 32x3 is 32 every 3rd. The two MViT-B
differ only there, so in their temporal position tables; MViTv2-B (2-3-16-3 blocks) is deeper
than MViTv2-S (1-2-11-2). ``mvit_b_32x3`` is the 16-block MViT-B of the paper's table and
pytorchvideo's ``mvit_base_32x3`` (36.6M params, 170 GMACs); PySlowFast's
``MVIT_B_32x3_CONV.yaml`` sets ``DEPTH: 24``, the paper's MViT-B-24, which this is not.
"""
from __future__ import annotations

from typing import Any, Sequence

from vislab.models.backbones.mvit_video import VideoMViT
from vislab.models.backbones.mvit_trunk import init_weights
from vislab.models.classifier import ImageClassifier
from vislab.models.registry_types import ModelEntry, Reference

# the switches between the two versions (see vislab.models.backbones.mvit_video)
MVIT_V1 = dict(pool_q_in_every_block=False, dim_mul_in_att=False, residual_pooling=False,
               rel_pos=False, sep_pos_embed=True, pool_norm_eps=1e-5)
MVIT_V2 = dict(pool_q_in_every_block=True, dim_mul_in_att=True, residual_pooling=True,
               rel_pos=True, sep_pos_embed=False, pool_norm_eps=1e-6)
KINETICS_CLASSES = 400


def mvit_video_classifier(*, num_classes: int, depths: Sequence[int], num_frames: int,
                          pool_q_in_every_block: bool, dim_mul_in_att: bool, residual_pooling: bool,
                          rel_pos: bool, sep_pos_embed: bool, pool_norm_eps: float,
                          img_size: int = 224, embed_dim: int = 96, num_heads: int = 1,
                          pool_kernel: Sequence[int] = (3, 3, 3), kv_stride: Sequence[int] = (1, 8, 8),
                          mlp_ratio: float = 4.0, drop_path_rate: float = 0.0, in_chans: int = 3,
                          dropout: float = 0.5, zero_init_head: bool = False) -> ImageClassifier:
    """A video MViT trunk (see ``VideoMViT``) with a linear classifier on its normed class
    token; ``dropout`` 0.5 before it as in the official configs (``MODEL.DROPOUT_RATE``)."""
    backbone = VideoMViT(depths=depths, embed_dim=embed_dim, num_heads=num_heads,
                         num_frames=num_frames, img_size=img_size, pool_kernel=pool_kernel,
                         kv_stride=kv_stride, pool_q_in_every_block=pool_q_in_every_block,
                         dim_mul_in_att=dim_mul_in_att, residual_pooling=residual_pooling,
                         rel_pos=rel_pos, sep_pos_embed=sep_pos_embed, pool_norm_eps=pool_norm_eps,
                         mlp_ratio=mlp_ratio, drop_path_rate=drop_path_rate, in_chans=in_chans)
    return ImageClassifier(backbone, num_classes=num_classes, dropout=dropout, head_init=init_weights,
                           zero_init_head=zero_init_head)


def _entry(name: str, *, num_frames: int, params: int | None, gmacs: float, source: str,
           **defaults: Any) -> ModelEntry:
    return ModelEntry(name=name, task="video", family="mvit_video", builder=mvit_video_classifier,
                      defaults={"num_frames": num_frames, **defaults},
                      input_size=(3, num_frames, 224, 224), num_classes=KINETICS_CLASSES,
                      reference=Reference(params=params, gmacs=gmacs, source=source))


ENTRIES = (
    _entry("mvit_b_16x4", num_frames=16, params=36_610_672, gmacs=70.5, depths=(1, 2, 11, 2),
           source="MViT paper; params as pytorchvideo mvit_base_16x4", **MVIT_V1),
    _entry("mvit_b_32x3", num_frames=32, params=36_611_440, gmacs=170.0, depths=(1, 2, 11, 2),
           source="MViT paper (36.6M); params as pytorchvideo mvit_base_32x3", **MVIT_V1),
    _entry("mvitv2_s_16x4", num_frames=16, params=None, gmacs=64.0, depths=(1, 2, 11, 2),
           source="MViTv2 paper and facebookresearch/mvit (34.5M params)", **MVIT_V2),
    _entry("mvitv2_b_32x3", num_frames=32, params=None, gmacs=225.0, depths=(2, 3, 16, 3),
           source="MViTv2 paper and facebookresearch/mvit (51.2M params)", **MVIT_V2),
)
