"""Stochastic depth (Huang et al., 2016), "drop path": drop a residual branch per sample."""
from __future__ import annotations

import torch
from torch import nn


class DropPath(nn.Module):
    """Zero a residual branch for a random ``drop_prob`` fraction of the samples in training,
    scaling the kept ones by ``1 / (1 - drop_prob)``; the identity at evaluation."""

    def __init__(self, drop_prob: float = 0.0):
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep = 1.0 - self.drop_prob
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob}"


def drop_path_rates(drop_path_rate: float, depth: int) -> list[float]:
    """Per-block rates rising linearly from 0 to ``drop_path_rate`` (DeiT, ConvNeXt, MViT)."""
    return [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]
