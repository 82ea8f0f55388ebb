"""vislab: one library, one config system and one trainer for visual recognition research.

Public API::

    import vislab
    model = vislab.create_model("resnet50", num_classes=10, norm="GN")
    vislab.list_models(task="classification")
    vislab.model_info("resnet50")        # params, GMACs, input size, published figures
    vislab.load_weights(model, "model.safetensors")
"""
from vislab.models import create_model, list_models, model_info
from vislab.weights import load_weights, save_weights

__version__ = "0.1.0"
__all__ = ["create_model", "list_models", "model_info", "load_weights", "save_weights", "__version__"]
