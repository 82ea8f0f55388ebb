"""Config-agnostic building blocks shared by every model."""
from vislab.layers.norm import FrozenBatchNorm2d, LayerNorm2d, NORM_NAMES, get_norm

__all__ = ["FrozenBatchNorm2d", "LayerNorm2d", "NORM_NAMES", "get_norm"]
