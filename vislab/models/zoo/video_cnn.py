"""Registry entries for 3-D CNN Kinetics-400 classifiers: C2D, I3D (+ non-local), Slow, SlowFast
and X3D, in the PySlowFast / pytorchvideo layouts.

An entry's input is the clip its published GMACs count: ``frames x crop x crop`` at the model's
fastest frame rate. The ResNet-based models (C2D, I3D, Slow, SlowFast) train on 224 crops but
PySlowFast and the pytorchvideo model zoo count their GFLOPs per 256x256 test view (e.g.
SlowFast R50 8x8: 50.3 GMACs at 224, 65.7 at 256), so they are measured at 256; X3D counts at its
training crop (160, 224, 312). The frame stride of each clip is in the name (8x8: 8 frames, one
every 8) or in the reference's source.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

from torch import nn

from vislab.models.backbones.resnet3d import ResNet3d
from vislab.models.backbones.slowfast import SlowFast
from vislab.models.backbones.x3d import X3D
from vislab.models.classifier import ImageClassifier
from vislab.models.registry_types import ModelEntry, Reference

KINETICS_CLASSES = 400
RESNET_TEST_CROP = 256
R50_DEPTHS = (3, 4, 6, 3)
R101_DEPTHS = (3, 4, 23, 3)
SOURCE = "PySlowFast / pytorchvideo model zoo"


def _head_init(fc: nn.Linear) -> None:
    """Normal(0, 0.01) weights and zero bias (PySlowFast's ``MODEL.FC_INIT_STD``)."""
    nn.init.normal_(fc.weight, std=0.01)
    nn.init.zeros_(fc.bias)


def resnet3d_classifier(*, num_classes: int, depths: Sequence[int] = R50_DEPTHS,
                        stem_temporal_kernel: int = 1,
                        temporal_kernels: Sequence[Sequence[int]] = ((1,), (1,), (3,), (3,)),
                        temporal_pool: int = 1,
                        nonlocal_locations: Sequence[Sequence[int]] = ((), (), (), ()),
                        nonlocal_instantiation: str = "softmax",
                        nonlocal_pool: Sequence[int] | None = (1, 2, 2), width: float = 1.0,
                        norm: str = "BN", norm_groups: int = 32, zero_init_residual: bool = True,
                        in_chans: int = 3, dropout: float = 0.5, zero_init_head: bool = False) -> ImageClassifier:
    """A C2D / I3D / Slow trunk (see ``ResNet3d``) with a linear classifier on pooled ``res5``;
    ``dropout`` 0.5 and zero-initialised last norms as in PySlowFast's Kinetics recipes."""
    backbone = ResNet3d(depths=depths, stem_temporal_kernel=stem_temporal_kernel,
                        temporal_kernels=temporal_kernels, temporal_pool=temporal_pool,
                        nonlocal_locations=nonlocal_locations, nonlocal_instantiation=nonlocal_instantiation,
                        nonlocal_pool=nonlocal_pool, width=width, norm=norm, norm_groups=norm_groups,
                        zero_init_residual=zero_init_residual, in_chans=in_chans)
    return ImageClassifier(backbone, num_classes=num_classes, dropout=dropout, head_init=_head_init,
                           zero_init_head=zero_init_head)


def slowfast_classifier(*, num_classes: int, alpha: int, fusion_kernel: int,
                        depths: Sequence[int] = R50_DEPTHS, beta_inv: int = 8, fusion_channel_ratio: int = 2,
                        width: float = 1.0, norm: str = "BN", norm_groups: int = 32, zero_init_residual: bool = True,
                        in_chans: int = 3, dropout: float = 0.5, zero_init_head: bool = False) -> ImageClassifier:
    """A SlowFast trunk (see ``SlowFast``) with a linear classifier on both pathways' pooled
    ``res5``, concatenated."""
    backbone = SlowFast(depths=depths, alpha=alpha, beta_inv=beta_inv, fusion_kernel=fusion_kernel,
                        fusion_channel_ratio=fusion_channel_ratio, width=width, norm=norm, norm_groups=norm_groups,
                        zero_init_residual=zero_init_residual, in_chans=in_chans)
    return ImageClassifier(backbone, num_classes=num_classes, dropout=dropout, head_init=_head_init,
                           zero_init_head=zero_init_head)


def x3d_classifier(*, num_classes: int, depth_factor: float, width_factor: float = 2.0,
                   bottleneck_factor: float = 2.25, head_width: int = 2048, norm: str = "BN",
                   norm_groups: int = 32, zero_init_residual: bool = True, in_chans: int = 3,
                   dropout: float = 0.5, zero_init_head: bool = False) -> ImageClassifier:
    """An X3D trunk (see ``X3D``) with a linear classifier on its ``lin5`` features."""
    backbone = X3D(width_factor=width_factor, depth_factor=depth_factor, bottleneck_factor=bottleneck_factor,
                   head_width=head_width, norm=norm, norm_groups=norm_groups,
                   zero_init_residual=zero_init_residual, in_chans=in_chans)
    return ImageClassifier(backbone, num_classes=num_classes, dropout=dropout, head_init=_head_init,
                           zero_init_head=zero_init_head)


def _entry(name: str, *, family: str, builder: Callable[..., nn.Module], frames: int, crop: int,
           params: int | None = None, gmacs: float | None = None, source: str = SOURCE,
           **defaults: Any) -> ModelEntry:
    published = params is not None or gmacs is not None
    reference = Reference(params=params, gmacs=gmacs, source=source) if published else None
    return ModelEntry(name=name, task="video", family=family, builder=builder, defaults=defaults,
                      input_size=(3, frames, crop, crop), num_classes=KINETICS_CLASSES, reference=reference)


def _resnet3d(name: str, **kwargs: Any) -> ModelEntry:
    return _entry(name, family="resnet3d", builder=resnet3d_classifier, crop=RESNET_TEST_CROP, **kwargs)


def _slowfast(name: str, **kwargs: Any) -> ModelEntry:
    return _entry(name, family="slowfast", builder=slowfast_classifier, frames=32, crop=RESNET_TEST_CROP,
                  **kwargs)


def _x3d(name: str, **kwargs: Any) -> ModelEntry:
    return _entry(name, family="x3d", builder=x3d_classifier, **kwargs)


C2D = dict(stem_temporal_kernel=1, temporal_kernels=((1,), (1,), (1,), (1,)), temporal_pool=2)
I3D = dict(stem_temporal_kernel=5, temporal_kernels=((3,), (3, 1), (3, 1), (1, 3)), temporal_pool=2)
SLOW = dict(stem_temporal_kernel=1, temporal_kernels=((1,), (1,), (3,), (3,)), temporal_pool=1)
# PySlowFast I3D_NLN_8x8_R50: NONLOCAL.LOCATION [[[]], [[1, 3]], [[1, 3, 5]], [[]]], softmax
I3D_NONLOCAL = dict(nonlocal_locations=((), (1, 3), (1, 3, 5), ()), nonlocal_instantiation="softmax")

ENTRIES = (
    _resnet3d("c2d_r50", frames=8, **C2D),
    _resnet3d("i3d_r50", frames=8, params=28_043_472, gmacs=37.5, **I3D),
    _resnet3d("i3d_r50_nl", frames=8, **I3D, **I3D_NONLOCAL),
    _resnet3d("slow_r50_4x16", frames=4, **SLOW),
    _resnet3d("slow_r50_8x8", frames=8, params=32_454_096, **SLOW),
    _slowfast("slowfast_r50_4x16", gmacs=36.7, alpha=8, fusion_kernel=5,
              source=f"SlowFast paper; {SOURCE} (34.48M params)"),
    _slowfast("slowfast_r50_8x8", params=34_566_488, gmacs=65.7, alpha=4, fusion_kernel=7),
    _slowfast("slowfast_r101_8x8", depths=R101_DEPTHS, alpha=4, fusion_kernel=5),
    # for 64-pixel clips on a CPU (the moving-shapes demo): one bottleneck per stage, half width,
    # Fast at a quarter of Slow's width, 16 frames of which Slow sees 4
    _entry("slowfast_small", family="slowfast", builder=slowfast_classifier, frames=16, crop=64,
           depths=(1, 1, 1, 1), width=0.5, alpha=4, beta_inv=4, fusion_kernel=5),
    _x3d("x3d_xs", frames=4, crop=160, gmacs=0.60, depth_factor=2.2,
         source="X3D paper, table 3 (3.79M params; 4 frames at stride 12)"),
    _x3d("x3d_s", frames=13, crop=160, gmacs=1.96, depth_factor=2.2,
         source="X3D paper, table 3 (3.79M params; 13 frames at stride 6)"),
    _x3d("x3d_m", frames=16, crop=224, params=3_794_274, gmacs=4.73, depth_factor=2.2,
         source="X3D paper, table 3 (16 frames at stride 5); params as pytorchvideo x3d_m"),
    _x3d("x3d_l", frames=16, crop=312, gmacs=18.37, depth_factor=5.0,
         source="X3D paper, table 3 (6.15M params; 16 frames at stride 5)"),
)
