"""Config-agnostic building blocks shared by every model."""
from vislab.layers.conv import WeightStdConv2d
from vislab.layers.drop import DropPath, drop_path_rates
from vislab.layers.mlp import Mlp
from vislab.layers.norm import FrozenBatchNorm2d, LayerNorm2d, NORM_NAMES, get_norm

__all__ = ["DropPath", "drop_path_rates", "FrozenBatchNorm2d", "LayerNorm2d", "Mlp", "NORM_NAMES", "get_norm", "WeightStdConv2d"]
