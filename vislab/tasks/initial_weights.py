"""The two ways a config initialises a model, shared by every task."""
from __future__ import annotations

from typing import Sequence

from omegaconf import DictConfig
from torch import nn

from vislab.engine.checkpoint import resolve_weights
from vislab.weights import WeightsError, load_backbone_weights, load_state_dict, read_weights, weights_source


def check_classes(*, saved: Sequence[str] | None, data: Sequence[str], source: str) -> None:
    """A model trained on other classes, or on the same ones in another order, gives wrong
    predictions without any error: refuse it, listing the differences. Weights that record no
    class names (converted from elsewhere) are not judged."""
    if saved is None or list(saved) == list(data):
        return
    only_saved = [c for c in saved if c not in data]
    only_data = [c for c in data if c not in saved]
    if only_saved or only_data:
        detail = (f"only in the weights: {only_saved or 'none'}; only in the data: {only_data or 'none'}")
    else:
        moved = [f"{c!r} ({i} in the weights, {list(data).index(c)} in the data)"
                 for i, c in enumerate(saved) if data[i] != c]
        detail = f"the same classes in another order: {', '.join(moved[:10])}"
    raise WeightsError(f"{source} was trained on other classes than the data has ({len(saved)} vs "
                       f"{len(data)}): {detail}")


def load_initial_weights(model: nn.Module, cfg: DictConfig, *, classes: Sequence[str] | None = None) -> nn.Module:
    """``pretrained`` initialises the backbone (transfer), then ``weights`` the whole model, whose
    recorded class names must be the data's ``classes``."""
    if cfg.pretrained:
        load_backbone_weights(model, resolve_weights(cfg.pretrained))
    if cfg.weights:
        path = resolve_weights(cfg.weights)
        state_dict, metadata = read_weights(path)
        source = weights_source(path, metadata)
        if classes is not None:
            check_classes(saved=metadata.get("classes"), data=classes, source=source)
        load_state_dict(model, state_dict, strict=True, source=source)
    return model
