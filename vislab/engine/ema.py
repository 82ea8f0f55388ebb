"""An exponential moving average of the model's weights (Polyak averaging), evaluated beside
the raw weights as in the DeiT and ConvNeXt recipes. Built on ``torch.optim.swa_utils``."""
from __future__ import annotations

from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn


def build_ema(model: nn.Module, *, decay: float) -> AveragedModel:
    """``ema.module`` tracks ``decay * ema + (1 - decay) * weights`` after each ``update``;
    buffers (BatchNorm statistics) are averaged the same way."""
    if not 0.0 < decay < 1.0:
        raise ValueError(f"train.ema_decay must lie in (0, 1), got {decay}")
    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)
