"""Optimizers with parameter groups: no weight decay on norm weights and biases."""
from __future__ import annotations

import torch
from torch import nn


def param_groups(model: nn.Module, *, weight_decay: float, decay_norm_and_bias: bool) -> list[dict]:
    """Split parameters into a decayed group and a group without decay.

    One-dimensional parameters (biases, norm scales and shifts) and any names the model lists in
    ``no_weight_decay()`` (e.g. position embeddings) get no decay unless ``decay_norm_and_bias``.
    Each group carries ``lr_scale`` (1.0 here), which the schedule multiplies into its lr.
    """
    skip = set(getattr(model, "no_weight_decay", lambda: ())())
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        exempt = param.ndim <= 1 or name in skip
        (no_decay if exempt and not decay_norm_and_bias else decay).append(param)
    groups = [{"params": decay, "weight_decay": weight_decay, "lr_scale": 1.0}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0, "lr_scale": 1.0})
    return groups


def build_optimizer(model: nn.Module, *, name: str, lr: float, weight_decay: float,
                    decay_norm_and_bias: bool, momentum: float, nesterov: bool,
                    betas: tuple[float, float], eps: float) -> torch.optim.Optimizer:
    groups = param_groups(model, weight_decay=weight_decay, decay_norm_and_bias=decay_norm_and_bias)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=nesterov)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), eps=eps)
    raise ValueError(f"unknown optimizer {name!r}; choose sgd or adamw")
