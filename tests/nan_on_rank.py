"""A NaN loss on one process only, for the multi-process test of the loss guard.

As a script it is ``vislab`` with that fault (``torchrun ... nan_on_rank.py RANK STEP train RECIPE
k=v ...``): process RANK's loss is NaN at its STEP-th training batch (the STEP-th optimizer step
without gradient accumulation); every other process and batch is left as it is.
"""
from __future__ import annotations

import math
import os
import sys

from vislab.cli import main
from vislab.tasks.classification import ClassificationTask


def nan_train_step(*, rank: int, step: int):
    """``ClassificationTask.train_step`` whose loss is NaN at its ``step``-th call on ``rank``."""
    train_step = ClassificationTask.train_step
    calls = 0

    def patched(task, model, batch, device):
        nonlocal calls
        calls += 1
        loss, images = train_step(task, model, batch, device)
        if calls == step and int(os.environ["RANK"]) == rank:
            loss = loss * math.nan
        return loss, images

    return patched


if __name__ == "__main__":
    rank, step, args = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3:]
    ClassificationTask.train_step = nan_train_step(rank=rank, step=step)
    sys.exit(main(args))
