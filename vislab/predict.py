"""Classifying image files with trained weights, rebuilding the model from their metadata."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from omegaconf import OmegaConf
from torch import nn

from vislab.config import model_kwargs
from vislab.data.datasets.image_folder import read_rgb
from vislab.data.transforms.classification import val_transform
from vislab.engine.checkpoint import resolve_weights
from vislab.models import create_model
from vislab.models.registry import get_entry
from vislab.weights import WeightsError, load_state_dict, read_weights

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


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
    """A predictor from vislab weights (their metadata names model, options, classes and
    transforms) or, given ``model_name``, from converted weights without that metadata."""
    path = resolve_weights(weights)
    state_dict, metadata = read_weights(path)
    if "config" in metadata:
        cfg = OmegaConf.create(metadata["config"])
        classes = list(metadata["classes"])
        model = create_model(cfg.model.name, num_classes=len(classes), **model_kwargs(cfg))
        d = cfg.data
        transform = val_transform(image_size=d.image_size, resize=d.val_resize, mean=d.mean, std=d.std)
    else:
        name = model_name or metadata.get("model")
        if name is None:
            raise WeightsError(f"{path} carries no model name; pass --model NAME")
        entry = get_entry(name)
        num_classes = int(metadata.get("num_classes", entry.num_classes))
        model = create_model(name, num_classes=num_classes, **metadata.get("options", {}))
        classes = [str(i) for i in range(num_classes)]
        transform = val_transform(image_size=entry.input_size[-1], resize=None, mean=IMAGENET_MEAN,
                                  std=IMAGENET_STD)
    load_state_dict(model, state_dict, strict=True, source=f"weights file {path}")
    return Predictor(model=model.eval(), transform=transform, classes=classes)
