"""Optimizers with parameter groups: no weight decay on norm weights and biases, optional
layer-wise lr decay, AdderNet's adaptive gradient scaling of adder layers, and a separate
optimizer (rule, lr, weight decay) for the adder weights."""
from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial

import torch
from torch import nn

from vislab.engine.lars import LARS
from vislab.layers.adder import adder_weights


def param_groups(model: nn.Module, *, weight_decay: float, decay_norm_and_bias: bool,
                 layer_decay: float | None = None, adder_eta: float | None = None,
                 adder_lr_scale: float = 1.0, adder_weight_decay: float | None = None) -> list[dict]:
    """Group parameters by (weight decay, lr scale, adder scaling).

    One-dimensional parameters (biases, norm scales and shifts) and any names the model lists in
    ``no_weight_decay()`` (e.g. position embeddings) get no decay unless ``decay_norm_and_bias``.
    With ``layer_decay`` a parameter at depth ``model.lr_layer_id(name)`` gets
    ``lr_scale = layer_decay ** (model.num_lr_layers - id)`` (BEiT, Bao et al., 2022, section 2.6;
    MAE fine-tuning), so the head learns at the full lr and the embedding at the smallest.
    With ``adder_eta`` the weights of adder layers form groups marked ``adder_eta``, whose
    gradients ``scale_adder_gradients`` rescales before each step; they take
    ``adder_weight_decay`` (default: ``weight_decay``) and an lr ``adder_lr_scale`` times the rest's.
    """
    if layer_decay is not None and getattr(model, "num_lr_layers", 0) < 1:
        raise ValueError(f"optim.layer_decay needs a model whose layers are numbered for it "
                         f"(ViT, ConvNeXt, MViTv2); this {type(model).__name__} has no layer ids")
    skip = set(getattr(model, "no_weight_decay", set)())
    if adder_eta is None and (adder_lr_scale != 1.0 or adder_weight_decay is not None):
        raise ValueError("optim.adder_lr and optim.adder_weight_decay need optim.adder_eta (the adder groups)")
    adders = {id(p) for p in adder_weights(model)} if adder_eta is not None else set()
    groups: dict[tuple[float, float, bool], dict] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        exempt = (param.ndim <= 1 or name in skip) and not decay_norm_and_bias
        scale = 1.0
        if layer_decay is not None:
            scale = layer_decay ** (model.num_lr_layers - model.lr_layer_id(name))
        adder = id(param) in adders
        if adder:
            decay = weight_decay if adder_weight_decay is None else adder_weight_decay
            scale *= adder_lr_scale
        else:
            decay = 0.0 if exempt else weight_decay
        key = (decay, scale, adder)
        group = {"params": [], "weight_decay": decay, "lr_scale": scale}
        if adder:
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


class PerGroupOptimizer(torch.optim.Optimizer):
    """Steps each parameter group with the torch optimizer its ``"optimizer"`` key names (e.g.
    AdamW for a detector's convolutions and norms, SGD with momentum for its adder weights,
    which AdderNet's adaptive scaling assumes: Adam would normalise the scaled gradient away).

    One state and one list of groups, in ``torch.optim.Optimizer``'s own format, so checkpoints,
    the lr schedule, gradient scaling and hooks treat it as any optimizer; the inner optimizers
    share its group dicts and its state (their parameters are disjoint) and do the stepping."""

    def __init__(self, groups: list[dict], *,
                 make: dict[str, Callable[[list[dict]], torch.optim.Optimizer]]) -> None:
        super().__init__(groups, defaults={})
        self._make = make
        self._inner: list[torch.optim.Optimizer] = []
        self._link()

    def _link(self) -> None:
        self._inner = []
        for name, make in self._make.items():
            groups = [group for group in self.param_groups if group["optimizer"] == name]
            if groups:
                inner = make(groups)  # fills in its defaults in the shared group dicts
                inner.state = self.state
                self._inner.append(inner)

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)  # replaces the group dicts and the state: relink
        self._link()

    @torch.no_grad()
    def step(self, closure=None):
        if closure is not None:
            raise ValueError("PerGroupOptimizer.step takes no closure")
        for inner in self._inner:
            inner.step()


OPTIMIZERS = ("sgd", "adamw", "lars")


def _torch_optimizer(name: str, groups: list[dict], *, lr: float, momentum: float, nesterov: bool,
                     betas: tuple[float, float], eps: float) -> torch.optim.Optimizer:
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=nesterov)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), eps=eps)
    return LARS(groups, lr=lr, momentum=momentum, nesterov=nesterov)


def build_optimizer(model: nn.Module, *, name: str, lr: float, weight_decay: float,
                    decay_norm_and_bias: bool, momentum: float, nesterov: bool,
                    betas: tuple[float, float], eps: float, layer_decay: float | None = None,
                    adder_eta: float | None = None, adder_optimizer: str | None = None,
                    adder_lr: float | None = None, adder_weight_decay: float | None = None
                    ) -> torch.optim.Optimizer:
    """``name`` steps every group, or, with ``adder_optimizer`` set to another rule, every group
    but the adder weights', which that rule steps (``PerGroupOptimizer``). ``adder_lr`` is the adder
    weights' peak lr (the schedule scales it with the rest's)."""
    for rule in (name, adder_optimizer or name):
        if rule not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {rule!r}; choose {', '.join(OPTIMIZERS)}")
    if adder_optimizer not in (None, name) and adder_eta is None:
        raise ValueError("optim.adder_optimizer needs optim.adder_eta (the adder groups)")
    groups = param_groups(model, weight_decay=weight_decay, decay_norm_and_bias=decay_norm_and_bias,
                          layer_decay=layer_decay, adder_eta=adder_eta,
                          adder_lr_scale=1.0 if adder_lr is None else adder_lr / lr,
                          adder_weight_decay=adder_weight_decay)
    options = dict(lr=lr, momentum=momentum, nesterov=nesterov, betas=betas, eps=eps)
    if adder_optimizer is None or adder_optimizer == name:
        optimizer = _torch_optimizer(name, groups, **options)
    else:
        for group in groups:
            group["optimizer"] = adder_optimizer if "adder_eta" in group else name
        optimizer = PerGroupOptimizer(groups, make={rule: partial(_torch_optimizer, rule, **options)
                                                    for rule in (name, adder_optimizer)})
    for group in optimizer.param_groups:
        group["lr"] = lr * group["lr_scale"]
    if any("adder_eta" in group for group in groups):
        optimizer.register_step_pre_hook(scale_adder_gradients)
    return optimizer
