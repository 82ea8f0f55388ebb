"""The one call through which vislab's attention layers run ``F.scaled_dot_product_attention``."""
from __future__ import annotations

import torch
from torch.nn import functional as F


def attend(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
           attn_mask: torch.Tensor | None = None, scale: float | None = None) -> torch.Tensor:
    """``F.scaled_dot_product_attention``, except that on a CPU, under autocast or with
    half-precision inputs, it is computed in float32: PyTorch's CPU flash-attention kernels run
    2-3x slower in bf16 than in fp32, mostly in their backward (torch 2.14 on this project's
    CPUs; ``benchmarks/attention.py``). The output has the inputs' dtype, or autocast's when
    autocast is on; on CUDA nothing changes."""
    on_cpu = query.device.type == "cpu"
    autocast = on_cpu and torch.is_autocast_enabled("cpu")
    if not on_cpu or (query.dtype == torch.float32 and not autocast):
        return F.scaled_dot_product_attention(query, key, value, attn_mask=attn_mask, scale=scale)
    out_dtype = torch.get_autocast_dtype("cpu") if autocast else query.dtype
    with torch.autocast("cpu", enabled=False):
        mask = None if attn_mask is None else attn_mask.float()
        out = F.scaled_dot_product_attention(query.float(), key.float(), value.float(), attn_mask=mask, scale=scale)
    return out.to(out_dtype)
