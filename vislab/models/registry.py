"""The model registry: a plain dict from name to ``ModelEntry``, filled from the zoo modules."""
from __future__ import annotations

import difflib
import inspect
from typing import Any, Sequence

from torch import nn

from vislab.models.features import FeatureMaps
from vislab.models.registry_types import ModelEntry
from vislab.models.zoo import (ava, convnext, fcos, mae, moco, mvit_video, mvitv2, rcnn, resnet, resnetv2,
                               video_cnn, vit, vitdet)


class UnknownModelError(KeyError):
    """A model name that is not in the registry."""

    def __str__(self) -> str:
        return str(self.args[0])


MODELS: dict[str, ModelEntry] = {
    entry.name: entry
    for family in (resnet, resnetv2, vit, convnext, mvitv2, mae, moco, rcnn, vitdet, fcos, mvit_video, video_cnn,
                   ava)
    for entry in family.ENTRIES
}


def get_entry(name: str) -> ModelEntry:
    if name not in MODELS:
        close = difflib.get_close_matches(name, MODELS, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else "; `vislab models` lists them"
        raise UnknownModelError(f"unknown model {name!r}{hint}")
    return MODELS[name]


def list_models(task: str | None = None) -> list[str]:
    """Registered model names, optionally only those of one task."""
    return sorted(name for name, entry in MODELS.items() if task is None or entry.task == task)


def builder_arguments(entry: ModelEntry) -> dict[str, inspect.Parameter]:
    """The keyword arguments a model's builder accepts (what ``create_model`` may override)."""
    return dict(inspect.signature(entry.builder).parameters)


def create_model(name: str, *, num_classes: int | None = None, features_only: bool = False,
                 out_indices: Sequence[int] | None = None, **overrides: Any) -> nn.Module:
    """Build the registered model ``name``.

    ``num_classes`` defaults to the entry's (1000 for ImageNet models); 0 gives a classifier
    without its last layer, whose output is the pooled features (timm's convention).
    ``features_only`` gives the trunk alone, returning its feature maps as a list (those at
    ``out_indices`` of its outputs, all by default), as timm does. ``overrides`` replace the
    entry's builder arguments, e.g. ``create_model("resnet50", norm="GN")``.
    """
    if features_only:
        model = create_model(name, num_classes=0 if get_entry(name).task in ("classification", "video") else None,
                             **overrides)
        if not hasattr(model, "backbone") or not hasattr(model.backbone, "output_shape"):
            raise ValueError(f"{name} has no trunk with named feature maps to return")
        return FeatureMaps(model.backbone, out_indices=out_indices)
    if out_indices is not None:
        raise ValueError("out_indices chooses feature maps: it needs features_only=True")
    entry = get_entry(name)
    accepted = builder_arguments(entry)
    unknown = [key for key in overrides if key not in accepted]
    if unknown:
        options = sorted(k for k in accepted if k != "num_classes")
        hints = {k: difflib.get_close_matches(k, options, n=2) for k in unknown}
        detail = "; ".join(f"{k!r} (did you mean {', '.join(v)}?)" if v else repr(k) for k, v in hints.items())
        raise TypeError(f"model {name!r} has no option {detail}; its options are {', '.join(options)}")
    kwargs = {**entry.defaults, **overrides}
    return entry.builder(num_classes=entry.num_classes if num_classes is None else num_classes, **kwargs)
