"""Registry entries for MoCo v1/v2/v3 pre-training models around registry backbones.

``backbone`` names a classification entry and ``backbone_options`` its builder options; the
MoCo model keeps that classifier's backbone as ``backbone``, so a checkpoint's ``backbone.*``
keys load into the same classifier. Hyper-parameters are the official repositories' defaults:
v1 (T 0.07, linear head), v2 (T 0.2, 2048-unit MLP head), v3 (ResNet: 2-layer projector,
T 1.0, zero-init residuals; ViT: 3-layer projector, T 0.2, frozen random patch projection, fixed
sin-cos positions, ViT-S with 12 heads as MoCo v3 table 1).
"""
from __future__ import annotations

from typing import Any

from torch import nn

from vislab.models.registry_types import ModelEntry
from vislab.ssl.moco import MoCo
from vislab.ssl.moco_v3 import MoCoV3


def _backbone(name: str, options: dict[str, Any] | None) -> nn.Module:
    from vislab.models.registry import create_model  # the registry imports this module

    return create_model(name, num_classes=1, **(options or {})).backbone


def moco_model(*, num_classes: int, backbone: str, backbone_options: dict[str, Any] | None = None,
               dim: int = 128, mlp_hidden: int | None = None, queue_size: int = 65536,
               momentum: float = 0.999, temperature: float = 0.07, bn_splits: int = 1) -> MoCo:
    """MoCo v1/v2 (see ``MoCo``); ``num_classes`` is accepted for the registry and ignored."""
    return MoCo(backbone=_backbone(backbone, backbone_options), dim=dim, mlp_hidden=mlp_hidden,
                queue_size=queue_size, momentum=momentum, temperature=temperature, bn_splits=bn_splits)


def moco_v3_model(*, num_classes: int, backbone: str, backbone_options: dict[str, Any] | None = None,
                  dim: int = 256, mlp_dim: int = 4096, projector_layers: int = 2, predictor_layers: int = 2,
                  predictor_last_bn: bool = False, momentum: float = 0.99, temperature: float = 1.0,
                  freeze_patch_embed: bool = False) -> MoCoV3:
    """MoCo v3 (see ``MoCoV3``); ``num_classes`` is accepted for the registry and ignored."""
    return MoCoV3(backbone=_backbone(backbone, backbone_options), dim=dim, mlp_dim=mlp_dim,
                  projector_layers=projector_layers, predictor_layers=predictor_layers,
                  predictor_last_bn=predictor_last_bn, momentum=momentum, temperature=temperature,
                  freeze_patch_embed=freeze_patch_embed)


def _entry(name: str, builder, *, input_size: tuple[int, ...] = (3, 224, 224), **defaults: Any) -> ModelEntry:
    return ModelEntry(name=name, task="pretrain", family="moco", builder=builder, defaults=defaults,
                      input_size=input_size, num_classes=0, reference=None)


_VIT_V3 = dict(projector_layers=3, predictor_last_bn=True, temperature=0.2, freeze_patch_embed=True)

ENTRIES = (
    _entry("moco_v1_r50", moco_model, backbone="resnet50"),
    _entry("moco_v2_r50", moco_model, backbone="resnet50", mlp_hidden=2048, temperature=0.2),
    _entry("moco_v2_r18_gn", moco_model, input_size=(3, 32, 32), backbone="resnet18",
           backbone_options={"width": 0.5, "norm": "GN", "norm_groups": 8, "small_stem": True},
           queue_size=4096, mlp_hidden=512, temperature=0.2),
    _entry("moco_v3_r50", moco_v3_model, backbone="resnet50", backbone_options={"zero_init_residual": True}),
    _entry("moco_v3_vit_s16", moco_v3_model, backbone="vit_s16",
           backbone_options={"num_heads": 12, "pos_embed": "sincos"}, **_VIT_V3),
    _entry("moco_v3_vit_b16", moco_v3_model, backbone="vit_b16", backbone_options={"pos_embed": "sincos"},
           **_VIT_V3),
)
