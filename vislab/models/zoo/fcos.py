"""Registry entries for FCOS over any vislab classification trunk (Tian et al., 2019), and Adder
FCOS (Chen et al., 2021): an AdderNet trunk and an adder neck under FCOS's convolutional head.

``fcos_r50_fpn`` is torchvision's ``fcos_resnet50_fpn`` layout: ResNet-50 with FrozenBN (stem and
res2 frozen), an FPN over res3-res5 with P6/P7 convolutions, the 4-conv GN head; with 91 classes
(torchvision counts a background class it never predicts) it has 32,269,600 parameters. Its
converted weights give torchvision's detections. The Adder FCOS entries keep every BatchNorm
training (frozen statistics did not converge in the paper, table 1) and freeze nothing.
"""
from __future__ import annotations

from functools import partial
from typing import Any, Sequence

from vislab.models.detection.fcos import FCOS, FCOSHead
from vislab.models.necks.fpn import FPN
from vislab.models.necks.nasfpn import NASFPN
from vislab.models.necks.pafpn import RPAFPN
from vislab.models.registry_types import ModelEntry, Reference
from vislab.models.zoo.rcnn import build_backbone


NECKS = ("fpn", "rpafpn", "nasfpn")


def fcos(*, num_classes: int = 80, backbone: str = "resnet50", backbone_options: dict | None = None,
         backbone_norm: str = "FrozenBN", freeze_at: int = 2, frozen_backbone: bool = False, neck: str = "fpn",
         neck_conv: str = "conv", fpn_features: Sequence[str] = ("res3", "res4", "res5"), fpn_channels: int = 256,
         fpn_norm: str = "none", nasfpn_repeats: int = 5, head_norm: str = "GN", head_convs: int = 4,
         center_sampling_radius: float = 1.5, score_threshold: float = 0.2, nms_threshold: float = 0.6,
         detections_per_image: int = 100, topk_candidates: int = 1000) -> FCOS:
    """FCOS with an FPN (P3-P7: ``fpn_features`` at strides 8-32, then P6/P7 convolutions), Adder
    FCOS's R-PAFPN (``neck="rpafpn"``) or NAS-FPN (``neck="nasfpn"``, ``nasfpn_repeats`` repeats,
    the heavier decoder of detection on a frozen trunk), adder layers in the FPN or R-PAFPN with
    ``neck_conv="adder"`` or "adder_sign" (and in the trunk with ``backbone_options={"conv": "adder"}``),
    and the shared convolutional head; thresholds as torchvision's (``score_threshold`` 0.2, NMS 0.6)."""
    if neck not in NECKS:
        raise ValueError(f"neck={neck!r} is not one of {', '.join(NECKS)}")
    trunk = build_backbone(backbone, norm=backbone_norm, options=backbone_options)
    if neck == "fpn":
        pyramid = FPN(input_shapes=trunk.output_shape(), in_features=fpn_features, out_channels=fpn_channels,
                      norm=fpn_norm, top_block="p6p7", conv=neck_conv)
    elif neck == "rpafpn":
        pyramid = RPAFPN(input_shapes=trunk.output_shape(), in_features=fpn_features, out_channels=fpn_channels,
                         norm=fpn_norm, conv=neck_conv)
    else:
        if neck_conv != "conv":
            raise ValueError(f"neck_conv={neck_conv!r}: the NAS-FPN neck has convolutions only")
        pyramid = NASFPN(input_shapes=trunk.output_shape(), in_features=fpn_features, channels=fpn_channels,
                         num_repeats=nasfpn_repeats, norm=fpn_norm)
    head = FCOSHead(channels=fpn_channels, num_classes=num_classes, num_convs=head_convs, norm=head_norm)
    return FCOS(backbone=trunk, fpn=pyramid, head=head, freeze_at=freeze_at, frozen_backbone=frozen_backbone,
                center_sampling_radius=center_sampling_radius, score_threshold=score_threshold,
                nms_threshold=nms_threshold, detections_per_image=detections_per_image,
                topk_candidates=topk_candidates)


def _entry(name: str, *, reference: Reference | None = None, **defaults: Any) -> ModelEntry:
    return ModelEntry(name=name, task="detection", family="fcos", builder=fcos, defaults=defaults,
                      input_size=(3, 800, 1216), num_classes=80, reference=reference)


ENTRIES = (
    _entry("fcos_r50_fpn",
           reference=Reference(params=None, gmacs=None, box_ap=39.2, source="torchvision fcos_resnet50_fpn")),
    # for the shapes set on a CPU: the half-width ResNet-18 trunk of mask_rcnn_r18_fpn_gn_small, GN
    # everywhere, from scratch, 64-channel FPN and head
    _entry("fcos_r18_fpn_gn_small", backbone="resnet18", backbone_options={"width": 0.5}, backbone_norm="GN",
           freeze_at=0, fpn_channels=64, fpn_norm="GN"),
    # Adder FCOS (B+N): AdderNet ResNet-50 trunk, adder R-PAFPN with BatchNorm, conv head, the sign
    # input gradient in every adder layer; and with the plain adder FPN, the neck the paper's
    # ablation starts from
    _entry("adder_fcos_r50_rpafpn", backbone_options={"conv": "adder_sign"}, backbone_norm="BN", freeze_at=0,
           neck="rpafpn", neck_conv="adder_sign", fpn_norm="BN",
           reference=Reference(params=None, gmacs=None, box_ap=37.8, source="Adder FCOS paper table 5 (2x)")),
    _entry("adder_fcos_r50_fpn", backbone_options={"conv": "adder_sign"}, backbone_norm="BN", freeze_at=0,
           neck_conv="adder_sign", fpn_norm="BN"),
    # the adder version of fcos_r18_fpn_gn_small for the shapes set: AdderNet trunk and R-PAFPN
    # with BatchNorm, the same GN head
    _entry("adder_fcos_r18_rpafpn_small", backbone="resnet18", backbone_options={"width": 0.5, "conv": "adder_sign"},
           backbone_norm="BN", freeze_at=0, neck="rpafpn", neck_conv="adder_sign", fpn_channels=64, fpn_norm="BN"),
)
