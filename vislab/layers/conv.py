"""Weight-standardised convolution (Qiao et al., 2019, "Weight Standardization"), as used with
GroupNorm throughout BiT (Kolesnikov et al., 2020, section 4.3)."""
from __future__ import annotations

import torch
from torch import nn


class WeightStdConv2d(nn.Conv2d):
    """A ``Conv2d`` that convolves with its weight standardised per output channel.

    Each filter ``W[o]`` is replaced by ``(W[o] - mean) / sqrt(var + eps)`` with the mean and
    the biased variance taken over its ``(in_channels / groups, kh, kw)`` entries (Weight
    Standardization, eq. 5). The stored parameter stays unstandardised and the standardisation
    is recomputed in every forward, so gradients flow through it. ``eps=1e-8`` is the value
    timm's BiT models use (``StdConv2d(eps=1e-8)``), so converted BiT weights give the same
    outputs.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, *, stride: int = 1,
                 padding: int = 0, groups: int = 1, bias: bool = False, eps: float = 1e-8):
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=padding,
                         groups=groups, bias=bias)
        self.eps = eps

    def standardized_weight(self) -> torch.Tensor:
        filters = self.weight.flatten(1)
        mean = filters.mean(dim=1, keepdim=True)
        var = filters.var(dim=1, unbiased=False, keepdim=True)
        return ((filters - mean) * torch.rsqrt(var + self.eps)).view_as(self.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, self.standardized_weight(), self.bias)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, eps={self.eps}"
