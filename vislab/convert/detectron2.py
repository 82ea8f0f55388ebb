"""detectron2's GeneralizedRCNN with a ResNet-FPN backbone (``model_final.pth`` of its
trainer, or any state dict of that layout) to vislab's R-CNN.

The layouts agree on class order (background last) and class-specific boxes; only names differ.
detectron2 attaches norms to their conv (``conv1.norm``); the 4conv1fc box head and the mask
head's conv indices depend on whether those convs carry a norm, which the keys tell.
Models trained from MSRA's ResNet weights use ``STRIDE_IN_1X1: True``: build them with
``backbone_options={"stride_in_1x1": true}``.
"""
from __future__ import annotations

import torch

from vislab.convert.renaming import rename_keys

TRUNK_RULES = (
    (r"^backbone\.bottom_up\.stem\.conv1\.norm\.", "backbone.stem.norm."),
    (r"^backbone\.bottom_up\.stem\.conv1\.", "backbone.stem.conv."),
    (r"^backbone\.bottom_up\.", "backbone."),
    (r"\.shortcut\.norm\.", ".downsample.1."),
    (r"\.shortcut\.", ".downsample.0."),
    (r"^(backbone\..*)\.conv(\d)\.norm\.", r"\1.norm\2."),
)


def _head_rules(*, fpn_has_norm: bool, head_has_norm: bool) -> tuple:
    step = 3 if head_has_norm else 2  # [conv, norm, relu] or [conv, relu] per layer

    def fpn_conv(kind: str):  # with a norm each FPN conv is Sequential(conv, norm)
        def rename(m) -> str:
            inner = ("1." if m.group(2) else "0.") if fpn_has_norm else ""
            return f"fpn.{kind}.{int(m.group(1)) - 2}.{inner}"
        return rename

    def conv_index(prefix: str):
        return lambda m: f"roi_heads.{prefix}.convs.{step * (int(m.group(1)) - 1) + (1 if m.group(2) else 0)}."

    return (
        (r"^backbone\.fpn_lateral(\d)\.(norm\.)?", fpn_conv("lateral")),
        (r"^backbone\.fpn_output(\d)\.(norm\.)?", fpn_conv("output")),
        (r"^proposal_generator\.rpn_head\.conv\.", "rpn.head.conv."),
        (r"^proposal_generator\.rpn_head\.objectness_logits\.", "rpn.head.objectness."),
        (r"^proposal_generator\.rpn_head\.anchor_deltas\.", "rpn.head.deltas."),
        (r"^roi_heads\.box_head\.fc(\d)\.", lambda m: f"roi_heads.box_head.fcs.{int(m.group(1)) - 1}."),
        (r"^roi_heads\.box_head\.conv(\d)\.(norm\.)?", conv_index("box_head")),
        (r"^roi_heads\.mask_head\.mask_fcn(\d)\.(norm\.)?", conv_index("mask_head")),
    )


def detectron2_rcnn(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    fpn_has_norm = any(k.startswith("backbone.fpn_lateral") and ".norm." in k for k in state_dict)
    head_has_norm = any(k.startswith("roi_heads.") and ".norm." in k for k in state_dict)
    rules = TRUNK_RULES + _head_rules(fpn_has_norm=fpn_has_norm, head_has_norm=head_has_norm)
    return rename_keys(state_dict, rules, drop=(r"^pixel_(mean|std)$", r"num_batches_tracked$"))
