"""timm's ``VisionTransformer`` (``vit_*_patch*_224``, DeiT) to vislab keys.

timm's ``fc_norm`` (the final norm after average pooling) and ``norm`` (before class-token
pooling) are the same vislab ``backbone.norm``; which one a model applies is ``global_pool``.
"""
from __future__ import annotations

import torch

from vislab.convert.renaming import rename_keys

VIT_RULES = (
    (r"^patch_embed\.proj\.", "patch_embed."),
    (r"\.ls(\d)\.", r".layer_scale\1."),
    (r"^fc_norm\.", "norm."),
    (r"^(patch_embed|cls_token|pos_embed|blocks|norm)\b", r"backbone.\1"),
    (r"^head\.", "head.fc."),
)


def timm_vit(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return rename_keys(state_dict, VIT_RULES)
