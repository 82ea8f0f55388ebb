"""Precise BatchNorm statistics: re-estimate every BatchNorm's running mean and variance at the
current weights before an evaluation (Wu & Johnson, 2021, "Rethinking 'Batch' in BatchNorm",
section 3; PySlowFast's ``BN.USE_PRECISE_STATS``, detectron2's ``PreciseBN`` hook).

The exponential moving average that BatchNorm keeps during training mixes statistics of weights
that have since moved; where the features' scale drifts fast (adder layers, whose outputs are
sums of absolute differences, or large learning rates) evaluation with it can cost many points.
The average over a fixed number of training batches, at frozen weights, does not lag.
"""
from __future__ import annotations

import itertools
from typing import Any, Callable, Iterable

import torch
from torch import nn
from torch.optim.swa_utils import update_bn

from vislab.engine.distributed import DistInfo, all_reduce_sum


class _BatchForward(nn.Module):
    """Lets ``update_bn`` (which calls ``module(batch)``) run a task's training step."""

    def __init__(self, model: nn.Module, train_step: Callable[[nn.Module, Any, torch.device], Any],
                 device: torch.device):
        super().__init__()
        self.model = model
        self.train_step = train_step
        self.device = device

    def forward(self, batch: Any) -> None:
        self.train_step(self.model, batch, self.device)


def recompute_batchnorm_statistics(model: nn.Module, batches: Iterable, *, num_batches: int,
                                   train_step: Callable[[nn.Module, Any, torch.device], Any],
                                   device: torch.device, dist: DistInfo) -> int:
    """Replace the running statistics of ``model``'s BatchNorm layers by their average over the
    first ``num_batches`` of ``batches``, each run through a task's ``train_step(model, batch,
    device)`` in training mode without gradients (torch's ``update_bn``); with several processes
    the averages are averaged over processes, so every copy evaluates the same model. Returns the
    batches used."""
    layers = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not layers:
        return 0
    counted = 0

    def counting(batches_: Iterable):
        nonlocal counted
        for batch in itertools.islice(batches_, num_batches):
            counted += 1
            yield batch

    update_bn(counting(batches), _BatchForward(model, train_step, device).train(model.training))  # mode restored after
    if dist.enabled:
        with torch.no_grad():
            for layer in layers:
                for buffer in (layer.running_mean, layer.running_var):
                    buffer.copy_(all_reduce_sum(buffer, dist) / dist.world_size)
    return counted
