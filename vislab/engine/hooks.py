"""Hooks run around the training loop: evaluation, checkpoints, logging, progress, plots.

The loop (``Trainer.fit``) calls ``before_train``, ``after_step`` after each optimizer step,
``after_epoch`` and ``after_train`` on each hook in order (detectron2's ``HookBase`` pattern).
"""
from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image

from vislab.engine.distributed import all_reduce_sum
from vislab.utils.files import atomic_write_text

if TYPE_CHECKING:
    from vislab.engine.trainer import Trainer


class Hook:
    def before_train(self, trainer: "Trainer") -> None: ...

    def after_step(self, trainer: "Trainer", metrics: dict[str, float]) -> None: ...

    def after_epoch(self, trainer: "Trainer") -> None: ...

    def after_train(self, trainer: "Trainer") -> None: ...


class EvalHook(Hook):
    """Evaluates every ``every`` epochs and after the last one."""

    def __init__(self, *, every: int):
        self.every = every

    def after_epoch(self, trainer: "Trainer") -> None:
        if trainer.epoch % self.every == 0 or trainer.epoch == trainer.max_epochs:
            trainer.run_evaluation()


class CheckpointHook(Hook):
    """Saves every ``every`` epochs, after the last one, and whenever the epoch's evaluation is
    the best so far (so the ``best`` checkpoint always holds the best weights)."""

    def __init__(self, *, every: int, keep_last: int):
        self.every = every
        self.keep_last = keep_last

    def after_epoch(self, trainer: "Trainer") -> None:
        if (trainer.epoch % self.every == 0 or trainer.epoch == trainer.max_epochs
                or trainer.best_is_current):
            trainer.save_checkpoint(keep_last=self.keep_last)


class MidEpochCheckpointHook(Hook):
    """Saves inside an epoch once ``every_steps`` optimizer steps or ``every_minutes`` minutes have
    passed since the last checkpoint (or since the run started).

    An epoch's last step is left to the epoch-end checkpoint (``CheckpointHook``); when that one
    does not save, the next step does. Rank 0's clock decides for every process: the save ends in
    a barrier, so processes that disagreed would wait for each other forever."""

    def __init__(self, *, every_steps: int | None, every_minutes: float | None, keep_last: int):
        self.every_steps = every_steps
        self.every_minutes = every_minutes
        self.keep_last = keep_last
        self.saved_step = 0
        self.saved_time = 0.0

    def _saved_now(self, trainer: "Trainer") -> None:
        self.saved_step, self.saved_time = trainer.step, time.monotonic()

    def before_train(self, trainer: "Trainer") -> None:
        self._saved_now(trainer)

    def after_step(self, trainer: "Trainer", metrics: dict[str, float]) -> None:
        ends_epoch = trainer.steps_into_epoch == trainer.steps_per_epoch or trainer.step == trainer.total_steps
        if not ends_epoch and self._due(trainer):
            trainer.save_checkpoint(keep_last=self.keep_last, mid_epoch=True)
            self._saved_now(trainer)

    def after_epoch(self, trainer: "Trainer") -> None:
        if trainer.saved_step == trainer.step:  # the epoch-end checkpoint was saved
            self._saved_now(trainer)

    def _due(self, trainer: "Trainer") -> bool:
        if self.every_steps is not None and trainer.step - self.saved_step >= self.every_steps:
            return True
        if self.every_minutes is None:
            return False
        late = trainer.dist.is_main and time.monotonic() - self.saved_time >= 60 * self.every_minutes
        return bool(all_reduce_sum(torch.tensor([float(late)]), trainer.dist)[0] > 0)


class MetricsWriter(Hook):
    """Appends one JSON object per logged step and evaluation to ``metrics.jsonl``, and writes
    the same scalars as TensorBoard events.

    A run first drops the records logged after the step it starts from: a resumed run's steps it
    is about to run again, all of them for a run that starts at step 0 in a folder without a
    checkpoint, and a record a crash cut short. TensorBoard hides those events (``purge_step``),
    so each step is recorded once however often a run is interrupted."""

    def __init__(self, run_dir: Path):
        self.run_dir = run_dir
        self.path = run_dir / "metrics.jsonl"
        self.tb = None

    def before_train(self, trainer: "Trainer") -> None:
        from torch.utils.tensorboard import SummaryWriter

        if self.path.exists():
            lines = self.path.read_text().splitlines()
            kept = [line for line in lines if _step_of(line) <= trainer.step]
            atomic_write_text(self.path, "".join(line + "\n" for line in kept))
        self.tb = SummaryWriter(log_dir=str(self.run_dir / "tensorboard"), purge_step=trainer.step + 1)

    def write(self, record: dict[str, Any]) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        for key, value in record.items():
            if key not in ("step", "epoch") and isinstance(value, (int, float)):
                self.tb.add_scalar(key, value, global_step=record["step"])
        self.tb.flush()

    def write_images(self, folder: Path, *, prefix: str, step: int) -> None:
        """Show the PNGs an evaluation wrote into ``folder`` (drawn detections, MAE reconstructions,
        a confusion matrix) in TensorBoard as ``prefix/<file name>`` at ``step``."""
        for png in sorted(folder.glob("*.png")) if folder.is_dir() else []:
            with Image.open(png) as image:
                pixels = np.asarray(image.convert("RGB"))
            self.tb.add_image(f"{prefix}/{png.stem}", pixels, global_step=step, dataformats="HWC")
        self.tb.flush()

    def after_step(self, trainer: "Trainer", metrics: dict[str, float]) -> None:
        if metrics:
            self.write({"step": trainer.step, "epoch": trainer.epoch_float, **metrics})

    def after_train(self, trainer: "Trainer") -> None:
        self.tb.close()


def _step_of(line: str) -> float:
    """The ``step`` of a ``metrics.jsonl`` line; infinity for a line a crash cut short."""
    try:
        return json.loads(line)["step"]
    except (json.JSONDecodeError, KeyError, TypeError):
        return math.inf


class ProgressHook(Hook):
    """A tqdm bar (ETA, loss, lr, images/s) on a terminal; plain log lines otherwise."""

    def __init__(self, *, total_steps: int, stream=None):
        self.total_steps = total_steps
        self.stream = stream or sys.stdout
        self.interactive = self.stream.isatty()
        self.bar = None
        self.start = 0.0

    def before_train(self, trainer: "Trainer") -> None:
        self.start = time.perf_counter()
        if self.interactive:
            from tqdm import tqdm

            self.bar = tqdm(total=self.total_steps, initial=trainer.step, file=self.stream,
                            dynamic_ncols=True, desc="train")

    def after_step(self, trainer: "Trainer", metrics: dict[str, float]) -> None:
        if self.bar is not None:
            self.bar.update(1)
            if metrics:
                self.bar.set_postfix(loss=f"{metrics['loss']:.4f}", lr=f"{metrics['lr']:.3g}",
                                     img_s=f"{metrics['images_per_s']:.0f}")
        elif metrics:
            elapsed = time.perf_counter() - self.start
            done = max(1, trainer.step - trainer.start_step)
            eta = elapsed / done * (self.total_steps - trainer.step)
            print(f"epoch {trainer.epoch_float:.2f} step {trainer.step}/{self.total_steps} "
                  f"loss {metrics['loss']:.4f} lr {metrics['lr']:.4g} "
                  f"{metrics['images_per_s']:.0f} img/s eta {eta:.0f}s", file=self.stream, flush=True)

    def after_epoch(self, trainer: "Trainer") -> None:
        if trainer.last_eval and trainer.last_eval.get("epoch") == trainer.epoch:
            line = "  ".join(f"{k} {v:.4f}" for k, v in trainer.last_eval.items()
                             if isinstance(v, float))
            message = f"epoch {trainer.epoch}/{trainer.max_epochs} eval: {line}"
            if self.bar is not None:
                self.bar.write(message)
            else:
                print(message, file=self.stream, flush=True)

    def after_train(self, trainer: "Trainer") -> None:
        if self.bar is not None:
            self.bar.close()


class CurvesHook(Hook):
    """Plots the training loss and every evaluation metric into ``curves.png``."""

    def __init__(self, run_dir: Path):
        self.run_dir = run_dir

    def after_train(self, trainer: "Trainer") -> None:
        from vislab.engine.plots import plot_curves

        plot_curves(self.run_dir / "metrics.jsonl", self.run_dir / "curves.png")
