"""From a resolved config to a finished training run: device, process group, run folder,
task, trainer, resume."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from vislab.config import to_yaml
from vislab.engine.checkpoint import LAST, CheckpointDir, resolve_checkpoint
from vislab.engine.distributed import DistInfo, broadcast_object, init_distributed, resolve_device, shutdown
from vislab.engine.trainer import Trainer
from vislab.tasks import build_task
from vislab.utils.files import atomic_write_text

RUNS_ROOT = Path("runs")


class RunDirError(FileExistsError):
    """A run folder that would be overwritten, or no earlier run to resume."""


def _has_checkpoint(run_dir: Path) -> bool:
    return CheckpointDir(run_dir / "checkpoints").pointer(LAST) is not None


def _newest_run(recipe: str) -> Path | None:
    parent = RUNS_ROOT / recipe
    runs = sorted(p for p in parent.glob("*") if p.is_dir() and _has_checkpoint(p)) if parent.is_dir() else []
    return runs[-1] if runs else None


def prepare_run_dir(cfg: DictConfig) -> tuple[Path, Path | None]:
    """The run folder and the checkpoint to resume from (None for a fresh run)."""
    recipe = cfg.recipe or "run"
    if isinstance(cfg.resume, str):
        checkpoint = resolve_checkpoint(cfg.resume)
        run_dir = Path(cfg.output_dir) if cfg.output_dir else checkpoint.parent.parent
        return run_dir, checkpoint
    if cfg.resume:
        run_dir = Path(cfg.output_dir) if cfg.output_dir else _newest_run(recipe)
        if run_dir is None or not _has_checkpoint(run_dir):
            where = run_dir or RUNS_ROOT / recipe
            raise RunDirError(f"resume=true but {where} holds no checkpoint to resume; "
                              f"start without resume")
        return run_dir, resolve_checkpoint(run_dir)
    if cfg.output_dir:
        run_dir = Path(cfg.output_dir)
        if _has_checkpoint(run_dir):
            raise RunDirError(f"{run_dir} already holds a run; pass resume=true to continue it "
                              f"or choose another output_dir")
        return run_dir, None
    return RUNS_ROOT / recipe / time.strftime("%Y%m%d-%H%M%S"), None


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
                plan = prepare_run_dir(cfg)
            except Exception as exc:  # every process must learn of it, not hang
                plan = exc
        plan = broadcast_object(plan, dist)
        if isinstance(plan, Exception):
            raise plan
        run_dir, resume_from = plan
        task = build_task(cfg)
        cfg = task.cfg  # a task may fill in data-dependent settings (BiT-HyperRule)
        if dist.is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_text(run_dir / "config.yaml", to_yaml(cfg))
        trainer = Trainer(cfg, task, run_dir=run_dir, device=device, dist=dist)
        if resume_from is not None:
            trainer.resume_from(resume_from)
        summary = trainer.fit()
        summary["run_dir"] = str(run_dir)
        if dist.is_main:
            atomic_write_text(run_dir / "summary.json", json.dumps(summary, indent=2))
        return summary
    finally:
        shutdown(dist)
