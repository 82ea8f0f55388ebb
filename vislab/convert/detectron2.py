"""detectron2's GeneralizedRCNN (``model_final.pth`` / ``.pkl`` of its trainer and model zoo, or
any state dict of that layout) to vislab's R-CNN: ResNet-FPN and MViTv2-FPN trunks
(``detectron2_rcnn``), ViTDet's ViT with its simple pyramid (``detectron2_vitdet``), and the
standard or Cascade heads of either.

The layouts agree on class order (background last) and class-specific (or, in the cascade,
class-agnostic) boxes; only names differ. detectron2 attaches norms to their conv
(``conv1.norm``); the 4conv1fc box head and the mask head's conv indices depend on whether those
convs carry a norm, which the keys tell. Models trained from MSRA's ResNet weights use
``STRIDE_IN_1X1: True``: build them with ``backbone_options={"stride_in_1x1": true}``.
"""
from __future__ import annotations

import re

import torch

from vislab.convert.renaming import rename_keys

RESNET_RULES = (
    (r"^backbone\.bottom_up\.stem\.conv1\.norm\.", "backbone.stem.norm."),
    (r"^backbone\.bottom_up\.stem\.conv1\.", "backbone.stem.conv."),
    (r"^backbone\.bottom_up\.", "backbone."),
    (r"\.shortcut\.norm\.", ".downsample.1."),
    (r"\.shortcut\.", ".downsample.0."),
    (r"^(backbone\..*)\.conv(\d)\.norm\.", r"\1.norm\2."),
)
MVIT_RULES = (
    (r"^backbone\.bottom_up\.patch_embed\.proj\.", "backbone.patch_embed."),
    (r"^backbone\.bottom_up\.scale(\d)_norm\.", lambda m: f"fpn.input_norms.{int(m.group(1)) - 2}."),
    (r"\.attn\.pool_([qkv])\.weight$", r".attn.pool_\1.conv.weight"),
    (r"\.attn\.norm_([qkv])\.", r".attn.pool_\1.norm."),
    (r"^(backbone\.stage\d\.\d+)\.proj\.", r"\1.shortcut_proj_attn."),
)
VIT_RULES = (
    (r"^backbone\.net\.patch_embed\.proj\.", "backbone.patch_embed."),
    (r"^backbone\.net\.", "backbone."),
)
# the simple pyramid's Sequential per level: [resample..., 1x1 conv (+norm), 3x3 conv (+norm)];
# the 1x1 conv sits at index 4 (scale 4), 1 (scale 2 and 1/2) or 0 (scale 1)
SIMPLE_PYRAMID_LATERAL = {"2": 4, "3": 1, "4": 0, "5": 1}


def _simple_pyramid_key(match: re.Match) -> str:
    level, index, norm = match.group(1), int(match.group(2)), match.group(3)
    lateral = SIMPLE_PYRAMID_LATERAL[level]
    prefix = f"fpn.levels.p{level}."
    if index < lateral:  # inside the resampling: a lone transposed conv, or Sequential(deconv, norm, GELU, deconv)
        return prefix + ("resample." if level == "3" else f"resample.{index}.")
    part = "lateral" if index == lateral else "output"
    return prefix + f"{part}.{1 if norm else 0}."


def _head_rules(*, fpn_has_norm: bool, head_has_norm: bool) -> tuple:
    step = 3 if head_has_norm else 2  # [conv, norm, relu] or [conv, relu] per layer

    def fpn_conv(kind: str):  # with a norm each FPN conv is Sequential(conv, norm)
        def rename(m) -> str:
            inner = ("1." if m.group(2) else "0.") if fpn_has_norm else ""
            return f"fpn.{kind}.{int(m.group(1)) - 2}.{inner}"
        return rename

    def layer(number: str, norm: str | None) -> int:  # detectron2's conv{n} / conv{n}.norm
        return step * (int(number) - 1) + (1 if norm else 0)

    def box_head(stage: str | None) -> str:  # the cascade's heads are ``box_head.{stage}``
        return f"roi_heads.box_heads.{stage[:-1]}." if stage else "roi_heads.box_head."

    return (
        (r"^backbone\.fpn_lateral(\d)\.(norm\.)?", fpn_conv("lateral")),
        (r"^backbone\.fpn_output(\d)\.(norm\.)?", fpn_conv("output")),
        (r"^proposal_generator\.rpn_head\.conv\.conv(\d)\.", lambda m: f"rpn.head.conv.{2 * int(m.group(1))}."),
        (r"^proposal_generator\.rpn_head\.conv\.", "rpn.head.conv."),
        (r"^proposal_generator\.rpn_head\.objectness_logits\.", "rpn.head.objectness."),
        (r"^proposal_generator\.rpn_head\.anchor_deltas\.", "rpn.head.deltas."),
        (r"^roi_heads\.box_head\.(\d+\.)?fc(\d)\.", lambda m: f"{box_head(m.group(1))}fcs.{int(m.group(2)) - 1}."),
        (r"^roi_heads\.box_head\.(\d+\.)?conv(\d)\.(norm\.)?",
         lambda m: f"{box_head(m.group(1))}convs.{layer(m.group(2), m.group(3))}."),
        (r"^roi_heads\.box_predictor\.(\d+)\.", r"roi_heads.box_predictors.\1."),
        (r"^roi_heads\.mask_head\.mask_fcn(\d)\.(norm\.)?",
         lambda m: f"roi_heads.mask_head.convs.{layer(m.group(1), m.group(2))}."),
    )


def _heads(state_dict: dict[str, torch.Tensor]) -> tuple:
    fpn_has_norm = any(k.startswith("backbone.fpn_lateral") and ".norm." in k for k in state_dict)
    head_has_norm = any(k.startswith("roi_heads.") and ".norm." in k for k in state_dict)
    return _head_rules(fpn_has_norm=fpn_has_norm, head_has_norm=head_has_norm)


def _mvit_stage_names(state_dict: dict[str, torch.Tensor]) -> dict[int, str]:
    """detectron2's flat MViT block index -> ``stage{s}.{j}``: a block that projects its shortcut
    (``blocks.i.proj``) starts each stage after the first."""
    blocks = sorted({int(m.group(1)) for k in state_dict for m in [re.match(r"backbone\.bottom_up\.blocks\.(\d+)\.", k)] if m})
    starts = {i for i in blocks if f"backbone.bottom_up.blocks.{i}.proj.weight" in state_dict}
    names, stage, index = {}, 1, 0
    for block in blocks:
        if block in starts:
            stage, index = stage + 1, 0
        names[block] = f"stage{stage}.{index}"
        index += 1
    return names


def detectron2_rcnn(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A ResNet-FPN or MViTv2-FPN R-CNN (standard or Cascade heads)."""
    if any(k.startswith("backbone.bottom_up.blocks.") for k in state_dict):
        stages = _mvit_stage_names(state_dict)
        blocks = ((r"^backbone\.bottom_up\.blocks\.(\d+)\.", lambda m: f"backbone.{stages[int(m.group(1))]}."),)
        trunk = MVIT_RULES[:2] + blocks + MVIT_RULES[2:]
    else:
        trunk = RESNET_RULES
    return rename_keys(state_dict, trunk + _heads(state_dict), drop=(r"^pixel_(mean|std)$", r"num_batches_tracked$"))


def detectron2_vitdet(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """ViTDet: the ViT trunk, its simple feature pyramid and the standard or Cascade heads."""
    pyramid = ((r"^backbone\.simfp_(\d)\.(\d)\.(norm\.)?", _simple_pyramid_key),)
    return rename_keys(state_dict, VIT_RULES + pyramid + _heads(state_dict), drop=(r"^pixel_(mean|std)$",))
