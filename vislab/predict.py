"""Classifying image files with trained weights, rebuilding the model from their metadata."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from omegaconf import OmegaConf
from torch import nn

from vislab.config import load_config
from vislab.data.datasets.image_folder import read_rgb
from vislab.engine.checkpoint import resolve_weights
from vislab.models.registry import get_entry
from vislab.tasks.classification import classifier_from_config, eval_transform_from
from vislab.weights import WeightsError, load_state_dict, read_weights


@dataclass
class Predictor:
    model: nn.Module
    transform: object
    classes: list[str]

    @torch.no_grad()
    def predict(self, paths: Sequence[str | Path], *, topk: int = 5) -> list[list[tuple[str, float]]]:
        """The ``topk`` (class name, probability) pairs of each image."""
        batch = torch.stack([self.transform(read_rgb(p)) for p in paths])
        probs = self.model(batch).float().softmax(dim=1)
        values, indices = probs.topk(min(topk, probs.shape[1]), dim=1)
        return [[(self.classes[i], float(v)) for v, i in zip(vs.tolist(), ix.tolist())]
                for vs, ix in zip(values, indices)]


def load_predictor(weights: str | Path, *, model_name: str | None = None) -> Predictor:
    """A predictor from vislab weights (their metadata holds the run's config and classes) or,
    for converted weights, from the model name and options in their metadata (or
    ``model_name``), with the schema's ImageNet normalisation at the model's input size."""
    path = resolve_weights(weights)
    state_dict, metadata = read_weights(path)
    if "config" in metadata:
        cfg = OmegaConf.create(metadata["config"])
        classes = list(metadata["classes"])
    else:
        name = model_name or metadata.get("model")
        if name is None:
            raise WeightsError(f"{path} carries no model name; pass --model NAME")
        entry = get_entry(name)
        options = metadata.get("options", {})
        side = options.get("img_size", entry.input_size[-1])
        cfg = load_config(None, [f"model.name={name}", f"data.image_size={side}",
                                 *(f"model.{k}={v}" for k, v in options.items())])
        classes = [str(i) for i in range(int(metadata.get("num_classes", entry.num_classes)))]
    model = classifier_from_config(cfg, num_classes=len(classes))
    load_state_dict(model, state_dict, strict=True, source=f"weights file {path}")
    return Predictor(model=model.eval(), transform=eval_transform_from(cfg), classes=classes)
