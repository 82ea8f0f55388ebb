"""Optimizers with parameter groups: no weight decay on norm weights and biases, and optional
layer-wise lr decay."""
from __future__ import annotations

import torch
from torch import nn

from vislab.engine.lars import LARS


def param_groups(model: nn.Module, *, weight_decay: float, decay_norm_and_bias: bool,
                 layer_decay: float | None = None) -> list[dict]:
    """Group parameters by (weight decay, lr scale).

    One-dimensional parameters (biases, norm scales and shifts) and any names the model lists in
    ``no_weight_decay()`` (e.g. position embeddings) get no decay unless ``decay_norm_and_bias``.
    With ``layer_decay`` a parameter at depth ``model.lr_layer_id(name)`` gets
    ``lr_scale = layer_decay ** (model.num_lr_layers - id)`` (BEiT, Bao et al., 2022, section 2.6;
    MAE fine-tuning), so the head learns at the full lr and the embedding at the smallest.
    """
    if layer_decay is not None and getattr(model, "num_lr_layers", 0) < 1:
        raise ValueError(f"optim.layer_decay needs a model whose layers are numbered for it "
                         f"(ViT, ConvNeXt, MViTv2); this {type(model).__name__} has no layer ids")
    skip = set(getattr(model, "no_weight_decay", set)())
    groups: dict[tuple[float, float], dict] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        exempt = (param.ndim <= 1 or name in skip) and not decay_norm_and_bias
        scale = 1.0
        if layer_decay is not None:
            scale = layer_decay ** (model.num_lr_layers - model.lr_layer_id(name))
        key = (0.0 if exempt else weight_decay, scale)
        groups.setdefault(key, {"params": [], "weight_decay": key[0], "lr_scale": scale})["params"].append(param)
    return list(groups.values())


def build_optimizer(model: nn.Module, *, name: str, lr: float, weight_decay: float,
                    decay_norm_and_bias: bool, momentum: float, nesterov: bool,
                    betas: tuple[float, float], eps: float,
                    layer_decay: float | None = None) -> torch.optim.Optimizer:
    groups = param_groups(model, weight_decay=weight_decay, decay_norm_and_bias=decay_norm_and_bias,
                          layer_decay=layer_decay)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=nesterov)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), eps=eps)
    if name == "lars":
        return LARS(groups, lr=lr, momentum=momentum, nesterov=nesterov)
    raise ValueError(f"unknown optimizer {name!r}; choose sgd, adamw or lars")
