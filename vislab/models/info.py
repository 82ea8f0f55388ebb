"""``model_info``: a registered model's measured complexity beside its published figures."""
from __future__ import annotations

from typing import Any, Sequence

from vislab.models.complexity import count_gmacs, count_params, on_meta
from vislab.models.registry import create_model, get_entry


def model_info(name: str, *, input_size: Sequence[int] | None = None, **overrides: Any) -> dict[str, Any]:
    """Params and GMACs of ``name`` measured at ``input_size`` (the entry's default if None),
    with the reference figures the model is held to."""
    entry = get_entry(name)
    size = tuple(input_size) if input_size is not None else entry.input_size
    model = on_meta(lambda: create_model(name, **overrides))
    ref = entry.reference
    return {
        "name": name,
        "task": entry.task,
        "params": count_params(model),
        "gmacs": round(count_gmacs(model, size), 4),
        "input": list(size),
        "num_classes": entry.num_classes,
        "reference": None if ref is None else {"params": ref.params, "gmacs": ref.gmacs, "source": ref.source},
    }
