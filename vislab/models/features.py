"""``create_model(name, features_only=True)``: a classifier's trunk returning its feature maps as a
list, as timm's ``features_only`` models do, with timm's ``feature_info`` beside them."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn


class FeatureMaps(nn.Module):
    """``forward(x)`` gives ``[maps[name] for name in names]`` of ``backbone.forward_features``;
    ``out_indices`` pick from the backbone's outputs in their order (``output_shape``), e.g.
    ResNet's res2..res5 as 0..3; None keeps all."""

    def __init__(self, backbone: nn.Module, *, out_indices: Sequence[int] | None = None):
        super().__init__()
        shapes = backbone.output_shape()
        names = list(shapes)
        indices = range(len(names)) if out_indices is None else list(out_indices)
        bad = [i for i in indices if not -len(names) <= i < len(names)]
        if bad:
            raise ValueError(f"out_indices {bad} are not indices of the backbone's outputs {names} "
                             f"(0..{len(names) - 1})")
        self.backbone = backbone
        self.names = [names[i] for i in indices]
        self.feature_info = [{"module": name, "num_chs": shapes[name].channels, "reduction": shapes[name].stride}
                             for name in self.names]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        maps = self.backbone.forward_features(x)
        return [maps[name] for name in self.names]
