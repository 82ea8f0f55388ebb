"""The two ways a config initialises a model, shared by every task."""
from __future__ import annotations

from omegaconf import DictConfig
from torch import nn

from vislab.engine.checkpoint import resolve_weights
from vislab.weights import load_backbone_weights, load_weights


def load_initial_weights(model: nn.Module, cfg: DictConfig) -> nn.Module:
    """``pretrained`` initialises the backbone (transfer), then ``weights`` the whole model."""
    if cfg.pretrained:
        load_backbone_weights(model, resolve_weights(cfg.pretrained))
    if cfg.weights:
        load_weights(model, resolve_weights(cfg.weights))
    return model
