"""Official MoCo checkpoints (facebookresearch/moco and moco-v3) to a vislab classifier's backbone.

A checkpoint is ``{"state_dict": ...}`` (``read_weights`` unwraps it) of the DDP-wrapped model:
the query encoder is ``module.encoder_q.*`` (v1/v2) or ``module.base_encoder.*`` (v3), named as
torchvision's ResNet or timm's ViT, whose ``fc`` / ``head`` is the projection head; the key
encoder (``encoder_k`` / ``momentum_encoder``), ``predictor``, ``queue`` and ``queue_ptr`` are
training state. Only the query encoder's trunk is kept, renamed by the torchvision / timm rules.
MoCo v3's ViT-S has 12 heads (timm's 6): convert it with ``num_heads=12``.
"""
from __future__ import annotations

import re

import torch

from vislab.convert.timm_vit import timm_vit
from vislab.convert.torchvision import torchvision_resnet
from vislab.weights import WeightsError

QUERY_ENCODER = re.compile(r"^(?:module\.)?(?:encoder_q|base_encoder)\.")


def query_encoder(state_dict: dict[str, torch.Tensor], *, head: str) -> dict[str, torch.Tensor]:
    """The query encoder's tensors without its prefix and without its ``head`` (the projector)."""
    encoder = {QUERY_ENCODER.sub("", key): value for key, value in state_dict.items() if QUERY_ENCODER.match(key)}
    if not encoder:
        sample = ", ".join(list(state_dict)[:5])
        raise WeightsError(f"no MoCo query encoder in this checkpoint: expected keys starting with "
                           f"module.encoder_q. (v1/v2) or module.base_encoder. (v3); found e.g. {sample}")
    return {key: value for key, value in encoder.items() if not key.startswith(f"{head}.")}


def moco_resnet(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return torchvision_resnet(query_encoder(state_dict, head="fc"))


def moco_vit(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return timm_vit(query_encoder(state_dict, head="head"))
