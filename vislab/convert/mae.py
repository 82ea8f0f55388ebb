"""facebookresearch/mae checkpoints to vislab keys.

MAE's encoder is timm's ``VisionTransformer`` layout (``patch_embed.proj``, ``cls_token``,
``pos_embed``, ``blocks.i.*``, ``norm``; fine-tuned checkpoints add ``fc_norm`` and ``head``), so
it is renamed by ``timm_vit``'s rules. Its decoder (``mask_token``, ``decoder_embed``,
``decoder_pos_embed``, ``decoder_blocks.i.*``, ``decoder_norm``, ``decoder_pred``) has the same
names in vislab's ``MaskedAutoencoder``. The file is ``{"model": state_dict}``, which
``vislab.weights.read_weights`` unwraps.
"""
from __future__ import annotations

import torch

from vislab.convert.renaming import rename_keys
from vislab.convert.timm_vit import VIT_RULES, timm_vit

DECODER_KEYS = r"^(mask_token|decoder_)"


def mae_pretrain(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A full pre-training checkpoint (encoder and decoder, e.g. ``mae_visualize_vit_large.pth``)
    to a vislab ``MaskedAutoencoder``."""
    return timm_vit(state_dict)


def mae_encoder(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The encoder of a pre-training checkpoint (decoder dropped), or a fine-tuned checkpoint
    with its ``fc_norm`` and ``head``, to a vislab ViT classifier."""
    return rename_keys(state_dict, VIT_RULES, drop=(DECODER_KEYS,))
