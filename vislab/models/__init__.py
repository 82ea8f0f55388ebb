"""Models: backbones, heads and the registry that names them."""
from vislab.models.info import model_info
from vislab.models.registry import MODELS, create_model, list_models

__all__ = ["MODELS", "create_model", "list_models", "model_info"]
