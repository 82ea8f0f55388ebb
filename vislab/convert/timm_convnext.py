"""timm's ConvNeXt (``timm.models.convnext``, ``convnext_tiny`` .. ``convnext_large``) to vislab keys.

timm keeps the official layout under other names: ``stem.0``/``stem.1`` are the patchify conv
and its norm, ``stages.i.downsample.0``/``.1`` the norm and conv before stage i, ``conv_dw`` the
depthwise conv, and ``head.norm`` the LayerNorm on the pooled features, which vislab's backbone
applies in ``forward_pooled``. No tensor changes shape.
"""
from __future__ import annotations

import torch

from vislab.convert.renaming import rename_keys

CONVNEXT_RULES = (
    (r"^stem\.0\.", "backbone.stem.conv."),
    (r"^stem\.1\.", "backbone.stem.norm."),
    (r"^stages\.(\d)\.", lambda m: f"backbone.stage{int(m.group(1)) + 1}."),
    (r"\.downsample\.0\.", ".downsample.norm."),
    (r"\.downsample\.1\.", ".downsample.conv."),
    (r"\.conv_dw\.", ".dwconv."),
    (r"^head\.norm\.", "backbone.pooled_norm."),
)


def timm_convnext(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return rename_keys(state_dict, CONVNEXT_RULES)
