"""Non-local block (Wang et al., 2018, "Non-local Neural Networks") for (N, C, T, H, W) features.

The response at each position is a weighted sum of an embedding ``g`` of every position, weighted
by the affinity of the ``theta`` and ``phi`` embeddings (eq. 1); a 1x1x1 projection, a norm and a
residual add wrap it (eq. 6). The norm's scale starts at zero, so an inserted block starts as the
identity and does not disturb the pre-trained network it is added to (section 4.1).
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from vislab.layers.sdpa import attend
from vislab.layers.norm import get_norm

INSTANTIATIONS = ("softmax", "dot_product")


class NonLocalBlock(nn.Module):
    """Embedded-Gaussian (``"softmax"``) or dot-product non-local block.

    Args:
        dim: input and output channels.
        dim_inner: channels of theta/phi/g; half of ``dim`` by default (the bottleneck of
            section 3.3).
        instantiation: ``"softmax"`` normalises the affinities with a softmax over positions
            (embedded Gaussian, eq. 3; scaled by ``dim_inner ** -0.5`` as PySlowFast does);
            ``"dot_product"`` divides them by the number of positions (eq. 4).
        pool_size: max-pool kernel (= stride) applied before phi and g, sub-sampling the
            positions attended to (section 3.3); (1, 2, 2) halves them spatially; None disables.
        norm, norm_groups: the norm after the output projection, for ``get_norm``.
    """

    def __init__(self, dim: int, *, dim_inner: int | None = None, instantiation: str = "softmax",
                 pool_size: Sequence[int] | None = (1, 2, 2), norm: str = "BN", norm_groups: int = 32):
        super().__init__()
        if instantiation not in INSTANTIATIONS:
            raise ValueError(f"unknown non-local instantiation {instantiation!r}; "
                             f"choose one of {', '.join(INSTANTIATIONS)}")
        dim_inner = dim // 2 if dim_inner is None else dim_inner
        self.instantiation = instantiation
        self.theta = nn.Conv3d(dim, dim_inner, 1)
        self.phi = nn.Conv3d(dim, dim_inner, 1)
        self.g = nn.Conv3d(dim, dim_inner, 1)
        subsample = pool_size is not None and any(k > 1 for k in pool_size)
        self.pool = nn.MaxPool3d(tuple(pool_size), stride=tuple(pool_size)) if subsample else nn.Identity()
        self.proj = nn.Conv3d(dim_inner, dim, 1)
        self.norm = get_norm(norm, dim, groups=norm_groups, dims=3)
        self.zero_init_output()

    def zero_init_output(self) -> None:
        """Start the block as the identity: a zero norm scale (a zero projection without norm)."""
        last = self.norm if getattr(self.norm, "weight", None) is not None else self.proj
        nn.init.zeros_(last.weight)
        if last is self.proj:
            nn.init.zeros_(self.proj.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, _, t, h, w = x.shape
        queries = self.theta(x).flatten(2).transpose(1, 2)  # (N, THW, C')
        pooled = self.pool(x)
        keys = self.phi(pooled).flatten(2).transpose(1, 2)  # (N, T'H'W', C')
        values = self.g(pooled).flatten(2).transpose(1, 2)
        if self.instantiation == "softmax":
            out = attend(queries, keys, values)
        else:
            out = (queries @ keys.transpose(1, 2)) / keys.shape[1] @ values
        out = out.transpose(1, 2).reshape(batch, -1, t, h, w)
        return x + self.norm(self.proj(out))
