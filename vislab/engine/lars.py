"""LARS (You, Gitman & Ginsburg, 2017) as MoCo v3's ``moco/optimizer.py`` implements it.

For a parameter ``w`` with gradient ``g`` and the group's weight decay ``wd``, the update
direction ``d = g + wd * w`` is scaled by the trust ratio ``eta * ||w|| / ||d||`` (1 where a norm
is 0), then SGD momentum follows: ``mu <- momentum * mu + d``, ``w <- w - lr * mu`` (Nesterov:
``w <- w - lr * (d + momentum * mu)``). One-dimensional parameters (norm scales and shifts,
biases) are neither decayed nor scaled, as the official code (MoCo v3's and MAE's) leaves them
out; every other parameter is scaled, and decayed by its group's weight decay (0 in vislab's
no-decay group, e.g. position embeddings; MAE's linear probe runs LARS with weight decay 0).
"""
from __future__ import annotations

from typing import Iterable

import torch


class LARS(torch.optim.Optimizer):
    def __init__(self, params: Iterable, *, lr: float, weight_decay: float = 0.0, momentum: float = 0.9,
                 nesterov: bool = False, trust_coefficient: float = 0.001):
        if lr < 0 or weight_decay < 0 or momentum < 0 or trust_coefficient <= 0:
            raise ValueError(f"LARS needs lr, weight_decay, momentum >= 0 and trust_coefficient > 0; got "
                             f"lr={lr}, weight_decay={weight_decay}, momentum={momentum}, "
                             f"trust_coefficient={trust_coefficient}")
        defaults = dict(lr=lr, weight_decay=weight_decay, momentum=momentum, nesterov=nesterov,
                        trust_coefficient=trust_coefficient)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for param in group["params"]:
                if param.grad is None:
                    continue
                update = param.grad
                if param.ndim > 1:
                    update = update.add(param, alpha=group["weight_decay"])
                    param_norm, update_norm = torch.linalg.vector_norm(param), torch.linalg.vector_norm(update)
                    trust = torch.where((param_norm > 0) & (update_norm > 0),
                                        group["trust_coefficient"] * param_norm / update_norm,
                                        torch.ones_like(param_norm))
                    update = update.mul(trust)
                state = self.state[param]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(param)
                buffer = state["momentum_buffer"]
                buffer.mul_(group["momentum"]).add_(update)
                update = update.add(buffer, alpha=group["momentum"]) if group["nesterov"] else buffer
                param.add_(update, alpha=-group["lr"])
        return loss
