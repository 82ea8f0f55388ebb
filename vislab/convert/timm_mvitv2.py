"""timm's MViTv2 (``timm.models.mvitv2``, ``mvitv2_tiny`` .. ``mvitv2_large``) to vislab keys.

timm nests blocks as ``stages.i.blocks.j`` and keeps each pooling convolution and its LayerNorm
as ``attn.pool_q`` / ``attn.norm_q`` (likewise k, v); vislab names the stages ``stage1``..
``stage4`` and groups each pooling as ``attn.pool_q.conv`` / ``attn.pool_q.norm``. The final
``norm`` is the backbone's (applied in ``forward_pooled``). No tensor changes shape; relative-
position tables of another size load only into a model built with a matching ``img_size``.
"""
from __future__ import annotations

import torch

from vislab.convert.renaming import rename_keys

MVITV2_RULES = (
    (r"^patch_embed\.proj\.", "backbone.patch_embed."),
    (r"^stages\.(\d)\.blocks\.", lambda m: f"backbone.stage{int(m.group(1)) + 1}."),
    (r"\.attn\.pool_([qkv])\.weight$", r".attn.pool_\1.conv.weight"),
    (r"\.attn\.norm_([qkv])\.", r".attn.pool_\1.norm."),
    (r"^norm\.", "backbone.norm."),
)


def timm_mvitv2(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return rename_keys(state_dict, MVITV2_RULES)
