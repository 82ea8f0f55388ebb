"""torchvision's ``maskrcnn_resnet50_fpn`` / ``fasterrcnn_resnet50_fpn`` to vislab's R-CNN, and
its ``fcos_resnet50_fpn`` to vislab's FCOS.

torchvision keeps a background row first in its class scores and predicts boxes and masks for
background too; vislab (detectron2's layout) puts background last and predicts boxes and masks
for the foreground classes only, so those rows are moved or dropped. Both torchvision key
layouts (before and after its ``Conv2dNormActivation`` heads) are read. FCOS's sigmoid
classifier has a logit for torchvision's background class too, never trained as foreground: it
is dropped, so vislab's label ``i`` is torchvision's ``i + 1``. (torchvision places a level's
points at multiples of image size // level size, which is the level's stride only for sides
divisible by the coarsest stride, 128; vislab places them at multiples of the stride, so on
other sizes the P6/P7 detections differ slightly.)
"""
from __future__ import annotations

import torch

from vislab.convert.renaming import rename_keys
from vislab.convert.torchvision import RESNET_RULES

# torchvision's numerics, recorded as the converted model's options
TORCHVISION_RCNN_OPTIONS = {"round_anchors": True, "roi_aligned": False, "roi_sampling_ratio": 2}

DETECTION_RULES = (
    (r"^backbone\.fpn\.inner_blocks\.(\d)\.(0\.)?", r"fpn.lateral.\1."),
    (r"^backbone\.fpn\.layer_blocks\.(\d)\.(0\.)?", r"fpn.output.\1."),
    (r"^rpn\.head\.conv\.(0\.0\.)?", "rpn.head.conv."),
    (r"^rpn\.head\.cls_logits\.", "rpn.head.objectness."),
    (r"^rpn\.head\.bbox_pred\.", "rpn.head.deltas."),
    (r"^roi_heads\.box_head\.fc6\.", "roi_heads.box_head.fcs.0."),
    (r"^roi_heads\.box_head\.fc7\.", "roi_heads.box_head.fcs.1."),
    (r"^roi_heads\.mask_head\.mask_fcn(\d)\.", lambda m: f"roi_heads.mask_head.convs.{2 * (int(m.group(1)) - 1)}."),
    (r"^roi_heads\.mask_head\.(\d)\.0\.", lambda m: f"roi_heads.mask_head.convs.{2 * int(m.group(1))}."),
    (r"^roi_heads\.mask_predictor\.conv5_mask\.", "roi_heads.mask_head.deconv."),
    (r"^roi_heads\.mask_predictor\.mask_fcn_logits\.", "roi_heads.mask_head.predictor."),
)


def torchvision_rcnn(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    trunk = {k.removeprefix("backbone.body."): v for k, v in state_dict.items() if k.startswith("backbone.body.")}
    rest = {k: v for k, v in state_dict.items() if not k.startswith("backbone.body.")}
    converted = {**rename_keys(trunk, RESNET_RULES, drop=(r"num_batches_tracked$",)),
                 **rename_keys(rest, DETECTION_RULES)}
    for name in ("weight", "bias"):
        scores = converted[f"roi_heads.box_predictor.cls_score.{name}"]
        converted[f"roi_heads.box_predictor.cls_score.{name}"] = torch.cat((scores[1:], scores[:1]))
        converted[f"roi_heads.box_predictor.bbox_pred.{name}"] = converted[f"roi_heads.box_predictor.bbox_pred.{name}"][4:]
        if f"roi_heads.mask_head.predictor.{name}" in converted:
            converted[f"roi_heads.mask_head.predictor.{name}"] = converted[f"roi_heads.mask_head.predictor.{name}"][1:]
    return converted


FCOS_RULES = (
    (r"^backbone\.fpn\.extra_blocks\.(p6|p7)\.", r"fpn.top.\1."),
    (r"^head\.classification_head\.conv\.", "head.classification."),
    (r"^head\.classification_head\.cls_logits\.", "head.cls_logits."),
    (r"^head\.regression_head\.conv\.", "head.regression."),
    (r"^head\.regression_head\.(bbox_reg|bbox_ctrness)\.", r"head.\1."),
)


def torchvision_fcos(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    trunk = {k.removeprefix("backbone.body."): v for k, v in state_dict.items() if k.startswith("backbone.body.")}
    rest = {k: v for k, v in state_dict.items() if not k.startswith("backbone.body.")}
    converted = {**rename_keys(trunk, RESNET_RULES, drop=(r"num_batches_tracked$",)),
                 **rename_keys(rest, DETECTION_RULES + FCOS_RULES, drop=(r"num_batches_tracked$",))}
    for name in ("weight", "bias"):
        converted[f"head.cls_logits.{name}"] = converted[f"head.cls_logits.{name}"][1:]
    return converted
