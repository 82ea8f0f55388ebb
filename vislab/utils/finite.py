"""Catching NaN and infinity in a model's outputs, where they would otherwise turn into a quiet
0% accuracy, an empty detection list or a printed ``nan%``."""
from __future__ import annotations

import contextlib
from typing import Any, Iterator

import torch
from torch import nn


class NonFiniteOutputError(FloatingPointError):
    """A model produced NaN or infinite outputs."""


def _tensors(output: Any, name: str = "output") -> Iterator[tuple[str, torch.Tensor]]:
    if isinstance(output, torch.Tensor):
        yield name, output
    elif isinstance(output, dict):
        for key, value in output.items():
            yield from _tensors(value, f"{name}[{key!r}]")
    elif isinstance(output, (list, tuple)):
        for index, value in enumerate(output):
            yield from _tensors(value, f"{name}[{index}]")


def check_finite(output: Any, *, what: str, consequence: str = "") -> None:
    """Raise ``NonFiniteOutputError`` naming the first floating tensor of ``output`` (a tensor or
    nested dicts/lists of them) holding NaN or infinity; ``what`` says whose output it is, and
    ``consequence`` what follows from it."""
    for name, tensor in _tensors(output):
        if tensor.is_floating_point() and tensor.numel() and not torch.isfinite(tensor).all():
            bad = int((~torch.isfinite(tensor)).sum())
            raise NonFiniteOutputError(f"{what} is not finite ({bad} of {tensor.numel()} values of {name} "
                                       f"are NaN or infinite){'; ' + consequence if consequence else ''}")


@contextlib.contextmanager
def finite_outputs(model: nn.Module, *, what: str, consequence: str = "") -> Iterator[None]:
    """Check every output of ``model.forward`` while the context is open."""
    handle = model.register_forward_hook(
        lambda _module, _inputs, output: check_finite(output, what=what, consequence=consequence))
    try:
        yield
    finally:
        handle.remove()
