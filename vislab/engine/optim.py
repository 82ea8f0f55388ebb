"""Optimizers with parameter groups: no weight decay on norm weights and biases, optional
layer-wise lr decay, and AdderNet's adaptive gradient scaling of adder layers."""
from __future__ import annotations

import math

import torch
from torch import nn

from vislab.engine.lars import LARS
from vislab.layers.adder import adder_weights


def param_groups(model: nn.Module, *, weight_decay: float, decay_norm_and_bias: bool,
                 layer_decay: float | None = None, adder_eta: float | None = None) -> list[dict]:
    """Group parameters by (weight decay, lr scale, adder scaling).

    One-dimensional parameters (biases, norm scales and shifts) and any names the model lists in
    ``no_weight_decay()`` (e.g. position embeddings) get no decay unless ``decay_norm_and_bias``.
    With ``layer_decay`` a parameter at depth ``model.lr_layer_id(name)`` gets
    ``lr_scale = layer_decay ** (model.num_lr_layers - id)`` (BEiT, Bao et al., 2022, section 2.6;
    MAE fine-tuning), so the head learns at the full lr and the embedding at the smallest.
    With ``adder_eta`` the weights of adder layers form groups marked ``adder_eta``, whose
    gradients ``scale_adder_gradients`` rescales before each step.
    """
    if layer_decay is not None and getattr(model, "num_lr_layers", 0) < 1:
        raise ValueError(f"optim.layer_decay needs a model whose layers are numbered for it "
                         f"(ViT, ConvNeXt, MViTv2); this {type(model).__name__} has no layer ids")
    skip = set(getattr(model, "no_weight_decay", set)())
    adders = {id(p) for p in adder_weights(model)} if adder_eta is not None else set()
    groups: dict[tuple[float, float, bool], dict] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        exempt = (param.ndim <= 1 or name in skip) and not decay_norm_and_bias
        scale = 1.0
        if layer_decay is not None:
            scale = layer_decay ** (model.num_lr_layers - model.lr_layer_id(name))
        key = (0.0 if exempt else weight_decay, scale, id(param) in adders)
        group = {"params": [], "weight_decay": key[0], "lr_scale": scale}
        if key[2]:
            group["adder_eta"] = adder_eta
        groups.setdefault(key, group)["params"].append(param)
    return list(groups.values())


@torch.no_grad()
def scale_adder_gradients(optimizer: torch.optim.Optimizer, *_) -> None:
    """AdderNet's adaptive learning-rate scaling (Chen et al., 2020, eq. 13), as an optimizer
    step pre-hook: each adder layer's gradient becomes ``eta * sqrt(k) * g / ||g||_2`` with ``k``
    its weight's element count, so every layer moves at the same rate whatever the magnitude of
    its (full-precision) gradient. It acts on the groups ``param_groups`` marks ``adder_eta``."""
    for group in optimizer.param_groups:
        eta = group.get("adder_eta")
        if eta is None:
            continue
        for param in group["params"]:
            if param.grad is not None:
                param.grad.mul_(eta * math.sqrt(param.numel()) / param.grad.norm().clamp(min=1e-12))


def build_optimizer(model: nn.Module, *, name: str, lr: float, weight_decay: float,
                    decay_norm_and_bias: bool, momentum: float, nesterov: bool,
                    betas: tuple[float, float], eps: float, layer_decay: float | None = None,
                    adder_eta: float | None = None) -> torch.optim.Optimizer:
    groups = param_groups(model, weight_decay=weight_decay, decay_norm_and_bias=decay_norm_and_bias,
                          layer_decay=layer_decay, adder_eta=adder_eta)
    if name == "sgd":
        optimizer = torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=nesterov)
    elif name == "adamw":
        optimizer = torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), eps=eps)
    elif name == "lars":
        optimizer = LARS(groups, lr=lr, momentum=momentum, nesterov=nesterov)
    else:
        raise ValueError(f"unknown optimizer {name!r}; choose sgd, adamw or lars")
    if any("adder_eta" in group for group in groups):
        optimizer.register_step_pre_hook(scale_adder_gradients)
    return optimizer
