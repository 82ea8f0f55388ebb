"""Weight converters: other codebases' state dicts renamed into vislab's layout.

``CONVERTERS[(source, family)]`` maps a source state dict to vislab keys; the result is loaded
strictly into the registry model, so a checkpoint of another variant fails with the keys that
do not fit, and saved as safetensors with the model name in its metadata.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch

from vislab.convert.timm_convnext import timm_convnext
from vislab.convert.timm_mvitv2 import timm_mvitv2
from vislab.convert.timm_resnetv2 import timm_resnetv2
from vislab.convert.timm_vit import timm_vit
from vislab.convert.torchvision import torchvision_resnet
from vislab.models.registry import create_model, get_entry
from vislab.weights import WeightsError, load_state_dict, read_weights, save_weights

Converter = Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]]

CONVERTERS: dict[tuple[str, str], Converter] = {
    ("torchvision", "resnet"): torchvision_resnet,
    ("timm", "convnext"): timm_convnext,
    ("timm", "resnetv2"): timm_resnetv2,
    ("timm", "vit"): timm_vit,
    ("timm", "mvitv2"): timm_mvitv2,
}


def convert_state_dict(*, source: str, model_name: str, state_dict: dict[str, torch.Tensor],
                       options: dict[str, Any] | None = None):
    """The converted state dict and the vislab model it was checked against; ``options`` are
    the model's builder options for variants other than the registry default (e.g. a ViT with
    ``global_pool="avg"``)."""
    entry = get_entry(model_name)
    converter = CONVERTERS.get((source, entry.family))
    if converter is None:
        known = sorted(f"{s} -> {f}" for s, f in CONVERTERS)
        raise WeightsError(f"no converter from {source} for {model_name} (family {entry.family}); "
                           f"available: {', '.join(known)}")
    converted = converter(state_dict)
    num_classes = converted["head.fc.weight"].shape[0] if "head.fc.weight" in converted else None
    model = create_model(model_name, num_classes=num_classes, **(options or {}))
    load_state_dict(model, converted, strict=True, source=f"{source} weights converted for {model_name}")
    return converted, model


def convert_file(*, source: str, model_name: str, src: str | Path, dst: str | Path,
                 options: dict[str, Any] | None = None) -> str:
    """Convert ``src`` to vislab safetensors at ``dst``; the metadata records the model name,
    class count and options, so ``vislab predict`` can rebuild the model."""
    state_dict, _ = read_weights(src)
    converted, model = convert_state_dict(source=source, model_name=model_name, state_dict=state_dict,
                                          options=options)
    num_classes = getattr(model, "num_classes", None)
    save_weights(converted, dst, metadata={"model": model_name, "num_classes": num_classes,
                                           "options": options or {}, "source": f"{source}:{Path(src).name}"})
    return f"{len(converted)} tensors for {model_name} ({num_classes} classes)"
