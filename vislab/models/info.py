"""``model_info``: a registered model's measured complexity beside its published figures."""
from __future__ import annotations

import functools
from typing import Any, Sequence

from vislab.models.complexity import count_gmacs, count_params, on_meta
from vislab.models.registry import create_model, get_entry


@functools.lru_cache(maxsize=None)
def _measure(name: str, size: tuple[int, ...]) -> tuple[int, float]:
    """Params and GMACs of a registry model as registered (measuring builds it on meta and
    runs it once, so the few seconds a large model takes are spent once per process)."""
    model = on_meta(lambda: create_model(name))
    return count_params(model), count_gmacs(model, size)


def model_info(name: str, *, input_size: Sequence[int] | None = None, **overrides: Any) -> dict[str, Any]:
    """Params and GMACs of ``name`` measured at ``input_size`` (the entry's default if None),
    with the reference figures the model is held to."""
    entry = get_entry(name)
    size = tuple(input_size) if input_size is not None else entry.input_size
    if overrides:
        model = on_meta(lambda: create_model(name, **overrides))
        params, gmacs = count_params(model), count_gmacs(model, size)
    else:
        params, gmacs = _measure(name, size)
    ref = entry.reference
    return {
        "name": name,
        "task": entry.task,
        "params": params,
        "gmacs": round(gmacs, 4),
        "input": list(size),
        "num_classes": entry.num_classes,
        "reference": None if ref is None else {"params": ref.params, "gmacs": ref.gmacs, "top1": ref.top1,
                                               "source": ref.source},
    }
