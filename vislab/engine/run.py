"""From a resolved config to a finished training run: device, process group, run folder,
task, trainer, resume."""
from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from vislab.config import to_yaml
from vislab.engine import elastic
from vislab.engine.checkpoint import STATE_FILE, CheckpointDir, CheckpointError, find_resumable
from vislab.engine.distributed import DistInfo, broadcast_object, init_distributed, resolve_device, shutdown
from vislab.engine.trainer import Trainer
from vislab.tasks import build_task
from vislab.utils.files import atomic_write_text

RUNS_ROOT = Path("runs")
# what a run leaves in its folder: a fresh run never writes into a folder holding any of them
RUN_FILES = ("checkpoints", "metrics.jsonl", "summary.json")


class RunDirError(FileExistsError):
    """A run folder that would be overwritten, or no earlier run to resume."""


def _holds_run(run_dir: Path) -> bool:
    return any((run_dir / name).exists() for name in RUN_FILES)


def _newest_run(recipe: str) -> Path | None:
    parent = RUNS_ROOT / recipe
    runs = sorted(p for p in parent.glob("*") if p.is_dir() and _holds_run(p)) if parent.is_dir() else []
    return runs[-1] if runs else None


def _create_new_folder(base: Path) -> Path:
    """``base`` created here and now, or ``base-1``, ``base-2``... if another run took it first
    (``mkdir`` without ``exist_ok`` is atomic, so two runs never share one)."""
    base.parent.mkdir(parents=True, exist_ok=True)
    for attempt in range(1000):
        candidate = base if attempt == 0 else base.with_name(f"{base.name}-{attempt}")
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            continue
    raise RunDirError(f"could not create a new run folder beside {base}")


def _check_writable_folder(run_dir: Path) -> None:
    if run_dir.exists() and not run_dir.is_dir():
        raise RunDirError(f"output_dir {run_dir} is a file, not a folder; choose another output_dir")
    existing = next((p for p in (run_dir, *run_dir.parents) if p.exists()), None)
    if existing is not None and not os.access(existing, os.W_OK | os.X_OK):
        raise RunDirError(f"output_dir {run_dir} cannot be written ({existing} is not writable); "
                          f"choose another output_dir")


def _newest_checkpoint(run_dir: Path) -> Path | None:
    try:
        return find_resumable(run_dir)
    except CheckpointError:
        return None


def prepare_run_dir(cfg: DictConfig) -> tuple[Path, Path | None]:
    """The run folder and where to resume from (``find_resumable``; None for a fresh run). A fresh
    run's folder is created here, atomically; a folder holding an earlier run is refused.

    ``resume=auto`` continues output_dir's newest checkpoint, or starts afresh there if it holds
    none. A torchrun restart in the folder its own job's first attempt marked (``elastic``) does
    the same whatever ``resume`` says, except that while no checkpoint is written there a resume
    path (or true) is followed as given."""
    recipe = cfg.recipe or "run"
    elastic.check_output_dir(cfg.output_dir)  # a restart implies an output_dir
    restarted = elastic.is_restart() and elastic.marked_by_this_job(Path(cfg.output_dir))
    if cfg.resume == "auto" or restarted:
        run_dir = Path(cfg.output_dir)
        _check_writable_folder(run_dir)
        newest = _newest_checkpoint(run_dir)
        if newest is not None or cfg.resume in ("auto", False):
            run_dir.mkdir(parents=True, exist_ok=True)
            return run_dir, newest
    if isinstance(cfg.resume, str):
        source = find_resumable(cfg.resume)
        run_of_source = source.parent.parent if (source / STATE_FILE).is_file() else source.parent
        run_dir = Path(cfg.output_dir) if cfg.output_dir else run_of_source
        _check_writable_folder(run_dir)
        return run_dir, source
    if cfg.resume:
        run_dir = Path(cfg.output_dir) if cfg.output_dir else _newest_run(recipe)
        if run_dir is None or not (run_dir / "checkpoints").is_dir():
            where = run_dir or RUNS_ROOT / recipe
            raise RunDirError(f"resume=true but {where} holds no checkpoint to resume; "
                              f"start without resume")
        _check_writable_folder(run_dir)
        return run_dir, find_resumable(run_dir)
    if not cfg.output_dir:
        return _create_new_folder(RUNS_ROOT / recipe / time.strftime("%Y%m%d-%H%M%S")), None
    run_dir = Path(cfg.output_dir)
    _check_writable_folder(run_dir)
    if _holds_run(run_dir):
        found = ", ".join(name for name in RUN_FILES if (run_dir / name).exists())
        raise RunDirError(f"{run_dir} already holds a run ({found}); pass resume=true to continue it "
                          f"or choose another output_dir")
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir, None


def _remove_unstarted_run(run_dir: Path, *, kept: set[str]) -> None:
    """Undo a fresh run that failed before its first step: delete what it put in ``run_dir``
    (everything but ``kept``, the names that were there before), and the folder if then empty."""
    for entry in run_dir.iterdir() if run_dir.is_dir() else []:
        if entry.name not in kept:
            shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
    if run_dir.is_dir() and not any(run_dir.iterdir()):
        run_dir.rmdir()


def train(cfg: DictConfig) -> dict[str, Any]:
    """Train as ``cfg`` says; returns the trainer's summary with the run folder."""
    device = resolve_device(cfg.train.device, local_rank=int(os.environ.get("LOCAL_RANK", "0")))
    if device.type == "cpu":
        # gradients that decay into denormal floats slow CPU convolutions down by 10-40x at random
        # steps; flushing them to zero changes nothing a float32 model can resolve
        torch.set_flush_denormal(True)
    dist: DistInfo = init_distributed(device)
    try:
        plan: Any = None
        if dist.is_main:
            try:
                run_dir = Path(cfg.output_dir) if cfg.output_dir else None
                kept = set(os.listdir(run_dir)) if run_dir is not None and run_dir.is_dir() else set()
                plan = (*prepare_run_dir(cfg), kept)
            except Exception as exc:  # every process must learn of it, not hang
                plan = exc
        plan = broadcast_object(plan, dist)
        if isinstance(plan, Exception):
            raise plan
        run_dir, resume_from, kept = plan
        trainer = None
        try:
            task = build_task(cfg)
            cfg = task.cfg  # a task may fill in data-dependent settings (BiT-HyperRule)
            if dist.is_main:
                run_dir.mkdir(parents=True, exist_ok=True)
                CheckpointDir(run_dir / "checkpoints").remove_stale_temporaries()
                atomic_write_text(run_dir / "config.yaml", to_yaml(cfg))
                elastic.mark(run_dir)
            trainer = Trainer(cfg, task, run_dir=run_dir, device=device, dist=dist)
            if resume_from is not None:
                trainer.resume_from(resume_from)
            summary = trainer.fit()
        except BaseException:
            if dist.is_main and resume_from is None and (trainer is None or trainer.step == 0):
                _remove_unstarted_run(run_dir, kept=kept)
            raise
        summary["run_dir"] = str(run_dir)
        if dist.is_main:
            atomic_write_text(run_dir / "summary.json", json.dumps(summary, indent=2))
        return summary
    finally:
        shutdown(dist)
