"""The record the model registry holds for each name."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from torch import nn


@dataclass(frozen=True)
class Reference:
    """Published figures a model is held to (params exact, GMACs within 2%)."""

    params: int | None
    gmacs: float | None
    source: str
    top1: float | None = None  # published ImageNet-1k top-1 (%), for the zoo page
    box_ap: float | None = None  # published COCO box AP (detectors), for the zoo page
    mask_ap: float | None = None  # published COCO mask AP
    ava_map: float | None = None  # published AVA v2.2 frame mAP@0.5 (action detectors)


@dataclass(frozen=True)
class ModelEntry:
    """A registered model: its builder, the builder's defaults for this variant, and the input
    size its complexity is measured at."""

    name: str
    task: str
    family: str  # weight converters are chosen by family, e.g. "resnet"
    builder: Callable[..., nn.Module]
    defaults: dict[str, Any] = field(default_factory=dict)
    input_size: tuple[int, ...] = (3, 224, 224)
    num_classes: int = 1000
    reference: Reference | None = None


def imagenet_classifier_entry(name: str, *, family: str, builder: Callable[..., nn.Module],
                              params: int | None, gmacs: float | None, source: str,
                              top1: float | None = None, **defaults: Any) -> ModelEntry:
    """The entry of an ImageNet-1k classifier measured at 224x224: ``defaults`` are the builder
    arguments that make this variant, the rest are its published figures."""
    return ModelEntry(name=name, task="classification", family=family, builder=builder,
                      defaults=defaults, input_size=(3, 224, 224), num_classes=1000,
                      reference=Reference(params=params, gmacs=gmacs, source=source, top1=top1))
