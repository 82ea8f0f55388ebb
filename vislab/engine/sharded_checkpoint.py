"""Sharded checkpoints through torch.distributed.checkpoint (``train.checkpoint_format=sharded``,
the default under FSDP).

Every process writes its own shards of the model, the optimizer state and the EMA into the
checkpoint's ``sharded/`` folder (DCP's ``FileSystemWriter``: one file per process, an index
written last), so no process ever holds the full state. Rank 0 adds vislab's metadata beside the
index and the trainer state (``state.pt``: epoch, RNG, the optimizer's hyper-parameters and any
non-tensor state) beside the folder. The folder is filled under a hidden name and renamed into
place by rank 0 once every process has written (``CheckpointDir.write``), as full checkpoints are.
Processes must share the file system the run folder is on.

Only tensors go through DCP: it reads non-tensor entries with ``torch.load(weights_only=False)``,
which could run code from the file. Loading reads each process's shards from whatever files hold
them, so a checkpoint resumes under another process count, and under DDP or one process too.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.distributed import checkpoint as dcp
from torch.distributed.checkpoint.state_dict import (get_model_state_dict, get_optimizer_state_dict,
                                                     set_model_state_dict, set_optimizer_state_dict)

from vislab.engine.checkpoint import SHARDED_DIR, STATE_FILE, CheckpointDir, CheckpointError
from vislab.weights import SHARDED_METADATA, load_sharded_tensors, single_process_dcp


def _split(model: nn.Module, optimizer: torch.optim.Optimizer,
           ema_module: nn.Module | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """The tensors to write or read through DCP (model, optimizer state, EMA; DTensor shards for a
    sharded model, keyed by parameter name) and the optimizer's remainder (its param groups and
    any non-tensor per-parameter state)."""
    optimizer_state = get_optimizer_state_dict(model, optimizer)
    tensors = {"model": get_model_state_dict(model),
               "optimizer": {name: {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
                             for name, state in optimizer_state["state"].items()}}
    if ema_module is not None:
        tensors["ema"] = get_model_state_dict(ema_module)
    rest = {"param_groups": optimizer_state["param_groups"],
            "state": {name: {k: v for k, v in state.items() if not isinstance(v, torch.Tensor)}
                      for name, state in optimizer_state["state"].items()}}
    return tensors, rest


def save(checkpoints: CheckpointDir, name: str, *, model: nn.Module, optimizer: torch.optim.Optimizer,
         ema_module: nn.Module | None, metadata: dict[str, Any] | None, trainer_state: dict[str, Any] | None,
         is_main: bool) -> Path:
    """Write checkpoint ``name``; a collective: every process calls it, rank 0 (``is_main``) with
    the metadata and trainer state."""
    tensors, rest = _split(model, optimizer, ema_module)

    def fill(folder: Path) -> None:
        with single_process_dcp():
            dcp.save(tensors, storage_writer=dcp.FileSystemWriter(str(folder / SHARDED_DIR)))
        if is_main:
            (folder / SHARDED_DIR / SHARDED_METADATA).write_text(json.dumps(metadata))
            torch.save({**trainer_state, "optimizer": rest}, folder / STATE_FILE)

    return checkpoints.write(name, fill, shared=True, commit=is_main)


def load(folder: Path, *, model: nn.Module, optimizer: torch.optim.Optimizer, ema_module: nn.Module | None,
         trainer_state: dict[str, Any]) -> None:
    """Read a sharded checkpoint's tensors (its files already checked against the index by
    ``load_checkpoint``) into ``model``, ``optimizer`` and ``ema_module`` (each process its own
    shards, or everything for an unsharded model); a collective when a process group is up.
    ``trainer_state`` is its ``state.pt``: the optimizer's remainder, and whether an EMA was saved."""
    if ema_module is not None and "ema_updates" not in trainer_state:
        raise CheckpointError(f"train.ema_decay is set but checkpoint {folder} holds no moving average")
    optimizer_rest = trainer_state["optimizer"]
    source = folder / SHARDED_DIR
    tensors, _ = _split(model, optimizer, ema_module)
    try:
        load_sharded_tensors(tensors, source)
        set_model_state_dict(model, tensors["model"])
        state = {name: {**tensors["optimizer"].get(name, {}), **optimizer_rest["state"].get(name, {})}
                 for name in {*tensors["optimizer"], *optimizer_rest["state"]}}
        set_optimizer_state_dict(model, optimizer, {"state": state, "param_groups": optimizer_rest["param_groups"]})
    except (RuntimeError, ValueError, KeyError) as exc:  # missing keys, other shapes (DCP wraps them in CheckpointException)
        raise CheckpointError(f"checkpoint {folder} does not fit {type(model).__name__}: {exc}") from None
    if ema_module is not None:
        set_model_state_dict(ema_module, tensors["ema"])
