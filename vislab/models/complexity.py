"""Parameter and multiply-add counts.

GMACs are counted with PyTorch's own ``FlopCounterMode``, which counts every matmul and
convolution (attention's ``scaled_dot_product_attention`` included) at 2 FLOPs per
multiply-add; the papers report multiply-adds, so the count is halved. Norms, activations and
pooling are not counted, as in the papers and fvcore. The model runs on the ``meta`` device, so
counting a ViT-H costs no memory or compute.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_gmacs(model: nn.Module, input_size: Sequence[int], *, batch_size: int = 1) -> float:
    """Multiply-adds (in 1e9) of one forward pass of ``model`` on one input of ``input_size``
    (a model taking several views of an image, such as MoCo, gets ``views_per_image`` of them)."""
    device = next(model.parameters()).device
    x = torch.zeros(batch_size, *input_size, device=device)
    views = getattr(model, "views_per_image", 1)
    was_training = model.training
    model.eval()
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(x if views == 1 else [x] * views)
    model.train(was_training)
    return counter.get_total_flops() / 2 / 1e9 / batch_size


def on_meta(build: Callable[[], nn.Module]) -> nn.Module:
    """Build a model without allocating or initialising its weights."""
    with torch.device("meta"):
        return build()
