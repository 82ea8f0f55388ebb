"""torchvision's ``maskrcnn_resnet50_fpn`` / ``fasterrcnn_resnet50_fpn`` to vislab's R-CNN.

torchvision keeps a background row first in its class scores and predicts boxes and masks for
background too; vislab (detectron2's layout) puts background last and predicts boxes and masks
for the foreground classes only, so those rows are moved or dropped. Both torchvision key
layouts (before and after its ``Conv2dNormActivation`` heads) are read.
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
