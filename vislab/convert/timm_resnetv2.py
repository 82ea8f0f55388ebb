"""timm's BiT ResNet v2 (``timm.models.resnetv2``, ``resnetv2_*_bit``) to vislab keys.

timm's head is a 1x1 convolution on the pooled map (weight ``[classes, C, 1, 1]``); vislab's
is a Linear layer, so that weight is reshaped to ``[classes, C]``.
"""
from __future__ import annotations

import torch

from vislab.convert.renaming import rename_keys

RESNETV2_RULES = (
    (r"^stem\.", "backbone.stem."),
    (r"^stages\.(\d)\.blocks\.", lambda m: f"backbone.res{int(m.group(1)) + 2}."),
    (r"\.downsample\.conv\.", ".projection."),
    (r"^norm\.", "backbone.norm."),
)


def timm_resnetv2(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    converted = rename_keys(state_dict, RESNETV2_RULES)
    if "head.fc.weight" in converted:
        converted["head.fc.weight"] = converted["head.fc.weight"].flatten(1)
    return converted
