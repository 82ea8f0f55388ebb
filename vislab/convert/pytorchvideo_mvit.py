"""pytorchvideo's MViT (``pytorchvideo.models.hub.mvit_base_16x4`` / ``mvit_base_32x3``, built by
``create_multiscale_vision_transformers``) to vislab's ``mvit_b_16x4`` / ``mvit_b_32x3``.

pytorchvideo numbers its blocks ``blocks.i`` across stages; vislab nests them as
``stage1``..``stage4``. MViT v1 pools queries only in the first block of each later stage, so a
block with ``attn.pool_q`` starts a stage, which is how the flat numbering is split. Its
attention projects queries, keys and values with three linear layers (``attn.q/k/v``); vislab
keeps them as one ``attn.qkv`` whose rows are the three stacked, so they are concatenated. The
rest is renaming: pooling ``pool_q`` / ``norm_q`` -> ``pool_q.conv`` / ``pool_q.norm``, the MLP
shortcut projection ``proj`` -> ``shortcut_proj_mlp``, ``norm_embed`` -> the backbone's final
norm and ``head.proj`` -> ``head.fc``.
"""
from __future__ import annotations

import re

import torch

from vislab.convert.renaming import rename_keys
from vislab.weights import WeightsError

BLOCK_KEY = re.compile(r"^blocks\.(\d+)\.(.*)$")
QKV = ("q", "k", "v")

MVIT_RULES = (
    (r"^patch_embed\.patch_model\.", "backbone.patch_embed."),
    (r"^cls_positional_encoding\.", "backbone."),
    (r"\.attn\.pool_([qkv])\.weight$", r".attn.pool_\1.conv.weight"),
    (r"\.attn\.norm_([qkv])\.", r".attn.pool_\1.norm."),
    (r"^(backbone\.stage\d\.\d+)\.proj\.", r"\1.shortcut_proj_mlp."),
    (r"^norm_embed\.", "backbone.norm."),
    (r"^head\.proj\.", "head.fc."),
)


def stage_positions(state_dict: dict[str, torch.Tensor]) -> dict[int, tuple[int, int]]:
    """``block index -> (stage number, index within the stage)``; a stage starts at block 0
    and at every block that pools its queries."""
    blocks = sorted({int(m.group(1)) for m in map(BLOCK_KEY.match, state_dict) if m})
    starts = [b for b in blocks if b == 0 or f"blocks.{b}.attn.pool_q.weight" in state_dict]
    if len(starts) != 4:
        raise WeightsError(f"pytorchvideo MViT weights should have 4 stages (queries pooled at 3 blocks); "
                           f"found stage starts at blocks {starts}")
    positions = {}
    for block in blocks:
        stage = sum(block >= start for start in starts)
        positions[block] = (stage, block - starts[stage - 1])
    return positions


def pytorchvideo_mvit(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    positions = stage_positions(state_dict)
    nested = {}
    for key, value in state_dict.items():
        match = BLOCK_KEY.match(key)
        if match:
            stage, index = positions[int(match.group(1))]
            key = f"backbone.stage{stage}.{index}.{match.group(2)}"
        nested[key] = value
    for prefix in sorted({k.rsplit(".attn.", 1)[0] for k in nested if ".attn.q." in k}):
        for param in ("weight", "bias"):
            parts = [nested.pop(f"{prefix}.attn.{name}.{param}", None) for name in QKV]
            if any(part is not None for part in parts):
                if any(part is None for part in parts):
                    raise WeightsError(f"{prefix}.attn has only some of q/k/v.{param}")
                nested[f"{prefix}.attn.qkv.{param}"] = torch.cat(parts, dim=0)
    return rename_keys(nested, MVIT_RULES)
