"""Backbone + linear head: the image classifier every family shares.

Each backbone's ``forward_pooled`` returns one feature vector per image, with whatever the
family's paper puts between the last block and the classifier (global average pooling for
ResNet; pooling + LayerNorm for ConvNeXt; the class token after the final norm for ViT). The
classifier adds dropout and one linear layer, so heads convert between codebases unchanged.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn


class ClassifierHead(nn.Module):
    """Dropout and a linear layer; ``logit_norm`` adds BatchNorm on the logits, as AdderNet's
    classifiers have (its ``bn2`` after the fc)."""

    def __init__(self, in_features: int, num_classes: int, *, dropout: float = 0.0, logit_norm: bool = False):
        super().__init__()
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.fc = nn.Linear(in_features, num_classes)
        self.norm = nn.BatchNorm1d(num_classes) if logit_norm else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.fc(self.dropout(x)))


class LinearProbeHead(nn.Module):
    """BatchNorm without affine parameters, then a linear classifier: the linear-probing head of
    MAE (appendix A.2), which normalises features of very different scales across encoders and is
    still a linear classifier. Kept as ``fc`` so its weights convert like any head's."""

    def __init__(self, in_features: int, num_classes: int):
        super().__init__()
        self.norm = nn.BatchNorm1d(in_features, affine=False, eps=1e-6)
        self.fc = nn.Linear(in_features, num_classes)
        nn.init.trunc_normal_(self.fc.weight, std=0.01)
        nn.init.zeros_(self.fc.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.norm(x))


class ImageClassifier(nn.Module):
    def __init__(self, backbone: nn.Module, *, num_classes: int, dropout: float = 0.0,
                 head_init: Callable[[nn.Linear], None] | None = None, zero_init_head: bool = False,
                 logit_norm: bool = False):
        """``head_init`` initialises the linear classifier the family's way (PyTorch's default
        otherwise); ``zero_init_head`` then starts it at zero, as transfer recipes do. With
        ``num_classes=0`` there is no classifier and ``forward`` returns the pooled features."""
        super().__init__()
        self.backbone = backbone
        self.num_classes = num_classes
        self.frozen_backbone = False
        if num_classes == 0:  # timm's convention: no classifier, the pooled features are the output
            self.head = nn.Identity()
            return
        self.head = ClassifierHead(backbone.num_features, num_classes, dropout=dropout, logit_norm=logit_norm)
        if head_init is not None:
            head_init(self.head.fc)
        if zero_init_head:  # BiT-HyperRule (Kolesnikov et al., 2020, section 3.3)
            nn.init.zeros_(self.head.fc.weight)
            nn.init.zeros_(self.head.fc.bias)

    def make_linear_probe(self) -> "ImageClassifier":
        """Freeze the backbone (no gradients, norms in eval mode) and replace the head by a
        ``LinearProbeHead``: the linear-probing protocol of self-supervised learning."""
        self.backbone.requires_grad_(False)
        self.frozen_backbone = True
        self.head = LinearProbeHead(self.backbone.num_features, self.num_classes)
        return self.train(self.training)

    def train(self, mode: bool = True) -> "ImageClassifier":
        super().train(mode)
        if self.frozen_backbone:
            self.backbone.eval()
        return self

    def forward_features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.backbone.forward_features(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen_backbone):
            features = self.backbone.forward_pooled(x)
        return self.head(features)

    def no_weight_decay(self) -> set[str]:
        """Parameter names exempt from weight decay (position embeddings, class tokens, ...)."""
        names = getattr(self.backbone, "no_weight_decay", set)()
        return {f"backbone.{n}" for n in names}

    def lr_layer_id(self, name: str) -> int:
        """Depth index of a parameter for layer-wise lr decay: the backbone's own ids
        (0 for the embedding) and ``num_lr_layers`` for the head."""
        if name.startswith("backbone.") and hasattr(self.backbone, "lr_layer_id"):
            return self.backbone.lr_layer_id(name.removeprefix("backbone."))
        return self.num_lr_layers

    @property
    def num_lr_layers(self) -> int:
        return getattr(self.backbone, "num_lr_layers", 0)
