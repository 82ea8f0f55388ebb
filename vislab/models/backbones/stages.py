"""The forward pass shared by the staged CNN trunks: the stem, then each stage on the previous one's output."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn


def run_stages(backbone: nn.Module, x: torch.Tensor, *, stage_names: Sequence[str]) -> dict[str, torch.Tensor]:
    """``backbone.stem`` on ``x``, then the submodules ``stage_names`` in order; every stage's
    output, by name (the ``forward_features`` contract)."""
    x = backbone.stem(x)
    features = {}
    for name in stage_names:
        x = getattr(backbone, name)(x)
        features[name] = x
    return features
