"""Backbone + global-average-pool + linear head: the image classifier every family shares."""
from __future__ import annotations

import torch
from torch import nn


class ClassifierHead(nn.Module):
    """Global average pooling, optional dropout, and a linear layer."""

    def __init__(self, in_features: int, num_classes: int, *, dropout: float = 0.0):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.fc = nn.Linear(in_features, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(torch.flatten(self.pool(x), 1)))


class ImageClassifier(nn.Module):
    """Runs ``backbone.forward_features`` and classifies the map named ``feature``."""

    def __init__(self, backbone: nn.Module, *, num_classes: int, feature: str, dropout: float = 0.0):
        super().__init__()
        shapes = backbone.output_shape()
        if feature not in shapes:
            raise ValueError(f"backbone has no output {feature!r}; it has {sorted(shapes)}")
        self.backbone = backbone
        self.feature = feature
        self.num_classes = num_classes
        self.head = ClassifierHead(shapes[feature].channels, num_classes, dropout=dropout)

    def forward_features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.backbone.forward_features(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone.forward_features(x)[self.feature])
