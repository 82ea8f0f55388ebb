"""Learning-rate schedules as a pure function of the optimizer step.

Linear warm-up (Goyal et al., 2017, section 2.2) from ``warmup_factor`` to 1, then cosine decay
(Loshchilov & Hutter, 2017) to ``min_lr_ratio``, step decay by ``gamma`` at milestones, or a
constant. Being stateless, the schedule resumes exactly from the saved step.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence


@dataclass(frozen=True)
class LRSchedule:
    name: str
    total_steps: int
    warmup_steps: int = 0
    warmup_factor: float = 0.001
    milestones: Sequence[int] = ()
    gamma: float = 0.1
    min_lr_ratio: float = 0.0

    def __call__(self, step: int) -> float:
        """The multiplier of the peak lr at ``step`` (0-based)."""
        if step < self.warmup_steps:
            alpha = step / self.warmup_steps
            return self.warmup_factor * (1 - alpha) + alpha
        if self.name == "cosine":
            span = max(1, self.total_steps - self.warmup_steps)
            progress = min(1.0, (step - self.warmup_steps) / span)
            return self.min_lr_ratio + (1 - self.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
        if self.name == "step":
            return self.gamma ** sum(step >= m for m in self.milestones)
        if self.name == "constant":
            return 1.0
        raise ValueError(f"unknown schedule {self.name!r}; choose cosine, step or constant")


def apply_lr(optimizer, *, base_lr: float, factor: float) -> float:
    """Set every group's lr to ``base_lr * factor * group['lr_scale']``; return the unscaled lr."""
    lr = base_lr * factor
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
    return lr
