"""Key renaming by ordered regular-expression rules."""
from __future__ import annotations

import re
from typing import Sequence

import torch


def rename_keys(state_dict: dict[str, torch.Tensor], rules: Sequence[tuple[str, object]], *,
                drop: Sequence[str] = ()) -> dict[str, torch.Tensor]:
    """Apply every ``(pattern, replacement)`` rule (a string or a function of the match, as
    ``re.sub`` takes) in order to each key; keys matching a
    ``drop`` pattern are left out."""
    compiled = [(re.compile(p), r) for p, r in rules]
    dropped = [re.compile(p) for p in drop]
    out = {}
    for key, value in state_dict.items():
        if any(d.search(key) for d in dropped):
            continue
        for pattern, replacement in compiled:
            key = pattern.sub(replacement, key)
        out[key] = value
    return out
