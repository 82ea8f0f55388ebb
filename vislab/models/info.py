"""``model_info``: a registered model's measured complexity beside its published figures."""
from __future__ import annotations

import functools
from typing import Any, Sequence

from vislab.models.complexity import count_params, energy_mj, on_meta, operation_counts
from vislab.models.registry import create_model, get_entry


def _count(name: str, size: tuple[int, ...], overrides: dict[str, Any]) -> tuple[int, dict | None]:
    """Params and GMACs, measured on the meta device. An R-CNN's multiply-adds depend on how
    many proposals and detections its input yields, which a weightless forward cannot know, so
    it reports params only; a one-stage detector's dense network (``dense_forward``) is counted."""
    model = on_meta(lambda: create_model(name, **overrides))
    if get_entry(name).task == "detection" and not hasattr(model, "dense_forward"):
        return count_params(model), None
    return count_params(model), operation_counts(model, size)


@functools.lru_cache(maxsize=None)
def _measure(name: str, size: tuple[int, ...]) -> tuple[int, dict | None]:
    """``_count`` of a registry model as registered, once per process (a large model takes a
    few seconds)."""
    return _count(name, size, {})


def model_info(name: str, *, input_size: Sequence[int] | None = None, **overrides: Any) -> dict[str, Any]:
    """Params and GMACs of ``name`` measured at ``input_size`` (the entry's default if None),
    with the reference figures the model is held to."""
    entry = get_entry(name)
    size = tuple(input_size) if input_size is not None else entry.input_size
    params, operations = _count(name, size, overrides) if overrides else _measure(name, size)
    gmacs = None if operations is None else sum(c["macs"] for c in operations.values())
    ref = entry.reference
    return {
        "name": name,
        "task": entry.task,
        "params": params,
        "gmacs": None if gmacs is None else round(gmacs, 4),
        "operations": operations,  # per kind of layer: macs, multiplications, additions (1e9)
        "energy_mj": None if operations is None else round(energy_mj(operations), 2),
        "input": list(size),
        "num_classes": entry.num_classes,
        "reference": None if ref is None else {"params": ref.params, "gmacs": ref.gmacs, "top1": ref.top1,
                                               "box_ap": ref.box_ap, "mask_ap": ref.mask_ap, "ava_map": ref.ava_map,
                                               "source": ref.source},
    }


# the options that switch a model to the invariance feature transform, and their plain values
INVARIANCE_OPTIONS = {"conv": "conv", "linear": "linear"}


def _without_invariance(options: dict[str, Any]) -> dict[str, Any]:
    """``options`` with every request for the transform, nested ones included (a detector's
    ``backbone_options={"conv": "ift"}``), replaced by the plain layer."""
    return {key: INVARIANCE_OPTIONS[key] if key in INVARIANCE_OPTIONS and value == "ift"
            else _without_invariance(value) if isinstance(value, dict) else value
            for key, value in options.items()}


def invariance_overhead(name: str, *, input_size: Sequence[int] | None = None, batch_size: int = 32,
                        **overrides: Any) -> dict[str, Any] | None:
    """What the invariance feature transform adds to a training forward pass (batch covariances,
    Newton-Schulz iterations, folding, patch RMS): GMACs per input of the model as configured
    against the same model with plain layers, at ``batch_size`` (the statistics' cost per input
    falls with the batch). None when the options do not ask for the transform."""
    plain = _without_invariance(overrides)
    if plain == overrides:
        return None
    size = tuple(input_size) if input_size is not None else get_entry(name).input_size

    def training_gmacs(options: dict[str, Any]) -> float:
        model = on_meta(lambda: create_model(name, **options))
        counts = operation_counts(model, size, batch_size=batch_size, training=True)
        return sum(c["macs"] for c in counts.values())

    with_transform, without = training_gmacs(overrides), training_gmacs(plain)
    return {"batch_size": batch_size, "gmacs": with_transform, "plain_gmacs": without,
            "overhead": with_transform / without - 1.0}
