"""Multi-head self-attention over a token sequence (Vaswani et al., 2017, section 3.2.2).

One ``qkv`` projection produces queries, keys and values for every head, the heads attend through
``F.scaled_dot_product_attention`` (which scales by ``1 / sqrt(head_dim)`` and which vislab's FLOP
counter sees), and ``proj`` mixes the heads' outputs. The parameter layout (``qkv``, ``proj``)
is the one of timm, DeiT and MAE, so their weights load by renaming the module prefix only.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class MultiHeadSelfAttention(nn.Module):
    """Self-attention of ``(N, L, dim)`` tokens with ``num_heads`` heads of ``dim // num_heads``.

    ``qkv_bias`` adds a learned bias to queries, keys and values (on in ViT, DeiT and MAE).
    """

    def __init__(self, dim: int, *, num_heads: int, qkv_bias: bool = True):
        super().__init__()
        if dim % num_heads != 0:
            raise ValueError(f"attention width {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, dim = x.shape
        qkv = self.qkv(x).reshape(batch, length, 3, self.num_heads, self.head_dim)
        query, key, value = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (N, heads, L, head_dim)
        attended = F.scaled_dot_product_attention(query, key, value)
        return self.proj(attended.transpose(1, 2).reshape(batch, length, dim))
