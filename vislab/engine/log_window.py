"""What the training loop sums between two logged steps, kept across a mid-epoch resume."""
from __future__ import annotations

import time
from typing import Any

import torch

from vislab.engine.distributed import DistInfo, all_reduce_sum


class LogWindow:
    """This process's sums since the last logged step: loss x images, images, skipped samples.

    A mid-epoch checkpoint keeps every process's sums and the window's running time, so the
    first record after a resume averages the same steps as it would have without the
    interruption (and the images/s leave out the time the run was down)."""

    def __init__(self):
        self.sums = torch.zeros(3, dtype=torch.float64)
        self.start = time.perf_counter()

    def reset(self) -> None:
        self.sums.zero_()
        self.start = time.perf_counter()

    def add(self, *, loss: float, images: int, skipped: int) -> None:
        self.sums += torch.tensor([loss * images, images, skipped], dtype=torch.float64)

    def close(self, dist: DistInfo) -> dict[str, float]:
        """The window's totals over all processes (a collective), then a fresh window."""
        totals = all_reduce_sum(self.sums.clone(), dist)  # one process: the very tensor reset below
        elapsed = time.perf_counter() - self.start
        self.reset()
        return {"loss": float(totals[0] / max(totals[1], 1)), "images_per_s": float(totals[1]) / max(elapsed, 1e-9),
                "skipped": int(totals[2])}

    def state(self) -> dict[str, Any]:
        return {"sums": self.sums.clone(), "seconds": time.perf_counter() - self.start}

    def restore(self, states: list[dict[str, Any]], *, dist: DistInfo) -> None:
        """Continue the windows ``states`` saved (one per process of the saving run, so any
        number): rank 0 takes their sums, the other processes start from zero."""
        self.sums = sum((s["sums"] for s in states), torch.zeros(3, dtype=torch.float64)) if dist.is_main \
            else torch.zeros(3, dtype=torch.float64)
        self.start = time.perf_counter() - states[0]["seconds"]
