"""Checkpoints: a folder per save holding ``model.safetensors`` and ``state.pt`` (the full
format), or ``sharded/`` and ``state.pt`` (the sharded format: ``sharded_checkpoint``).

A checkpoint is written into a hidden temporary folder and renamed into place, then the
``last`` (and ``best``) pointer files are replaced atomically, so a crash at any moment leaves
the previous checkpoint intact. ``state.pt`` holds only tensors, numbers, strings and
containers, and is read with ``torch.load(weights_only=True)``.
"""
from __future__ import annotations

import random
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from vislab.utils.files import atomic_write_text
from vislab.weights import WeightsError, check_sharded, is_sharded, read_weights, save_weights

MODEL_FILE = "model.safetensors"
SHARDED_DIR = "sharded"
EMA_FILE = "ema.safetensors"
STATE_FILE = "state.pt"
LAST = "last"
BEST = "best"


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, corrupt, or does not fit the run."""


def rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "python": random.getstate(),
    }


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
    np_state = state["numpy"]
    np.random.set_state(("MT19937", np_state["keys"].numpy().astype(np.uint32), np_state["pos"],
                         np_state["has_gauss"], np_state["cached_gaussian"]))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


@dataclass
class Checkpoint:
    """A loaded checkpoint: model tensors, their metadata, and the trainer state; a sharded one
    leaves ``model`` and ``ema`` to be read from ``sharded`` into the model's own shards."""

    path: Path
    model: dict[str, torch.Tensor] | None
    metadata: dict[str, Any]
    state: dict[str, Any]
    ema: dict[str, torch.Tensor] | None = None
    sharded: Path | None = None


class CheckpointDir:
    """The ``checkpoints/`` folder of a run."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def save(self, name: str, *, model_state: dict[str, torch.Tensor], metadata: dict[str, Any],
             trainer_state: dict[str, Any],
             extra_weights: dict[str, dict[str, torch.Tensor]] | None = None) -> Path:
        """Write a checkpoint folder; ``extra_weights`` maps file names (e.g. ``ema.safetensors``)
        to further state dicts saved beside the model with the same metadata."""
        def fill(folder: Path) -> None:
            save_weights(model_state, folder / MODEL_FILE, metadata=metadata)
            for file_name, weights in (extra_weights or {}).items():
                save_weights(weights, folder / file_name, metadata=metadata)
            torch.save(trainer_state, folder / STATE_FILE)

        return self.write(name, fill)

    def write(self, name: str, fill: Callable[[Path], None], *, shared: bool = False, commit: bool = True) -> Path:
        """``fill`` a hidden folder, then rename it to ``name`` and point ``last`` at it. With
        ``shared`` the hidden folder's name is fixed, so that every process of a sharded save
        fills the same one; only one of them (``commit``) renames it and cleans up after a failure."""
        self.root.mkdir(parents=True, exist_ok=True)
        if shared:
            tmp = self.root / f".{name}.shared"
            tmp.mkdir(mode=0o755, exist_ok=True)
        else:
            tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=self.root))
            tmp.chmod(0o755)
        final = self.root / name
        try:
            fill(tmp)
            if not commit:
                return final
            if final.exists():  # a re-save: move the old folder aside, never leave a gap
                old = final.rename(self.root / f".{name}.old")
                tmp.rename(final)
                shutil.rmtree(old)
            else:
                tmp.rename(final)
        except (OSError, RuntimeError) as exc:  # a full disk (torch.save reports it as RuntimeError)
            last = self.pointer(LAST)
            raise CheckpointError(f"could not save checkpoint {name} in {self.root}: {getattr(exc, 'strerror', None) or exc}; "
                                  f"{f'the newest checkpoint is still {last}' if last else 'no checkpoint was saved'}") from exc
        finally:
            if commit and tmp.exists():
                shutil.rmtree(tmp)
        atomic_write_text(self.root / LAST, name)
        return final

    def mark_best(self, name: str) -> None:
        atomic_write_text(self.root / BEST, name)

    def pointer(self, which: str) -> Path | None:
        file = self.root / which
        if not file.is_file():
            return None
        target = self.root / file.read_text().strip()
        return target if target.is_dir() else None

    def saved(self) -> list[Path]:
        """The checkpoint folders, oldest first (their names sort by epoch)."""
        if not self.root.is_dir():
            return []
        return sorted(p for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))

    def remove_stale_temporaries(self) -> list[Path]:
        """Delete the hidden folders a save killed half-way leaves behind; returns them."""
        stale = [p for p in self.root.glob(".*") if p.is_dir()] if self.root.is_dir() else []
        for folder in stale:
            shutil.rmtree(folder)
        return stale

    def load_newest_valid(self) -> Checkpoint:
        """The ``last`` checkpoint if it loads, else the newest older one that does, with a
        warning naming what was passed over; an error naming each failure if none loads."""
        last = self.pointer(LAST)
        candidates = ([last] if last is not None else []) + [p for p in reversed(self.saved()) if p != last]
        passed_over = [] if last is not None or not (self.root / LAST).exists() else \
            [f"{self.root / LAST} names {(self.root / LAST).read_text().strip()!r}, which is missing"]
        for folder in candidates:
            try:
                loaded = load_checkpoint(folder)
            except CheckpointError as exc:
                passed_over.append(str(exc))
                continue
            if passed_over:
                warnings.warn(f"resuming from {folder}, the newest checkpoint that loads; passed over: "
                              f"{'; '.join(passed_over)}", stacklevel=2)
            return loaded
        raise CheckpointError(f"no checkpoint in {self.root} loads: {'; '.join(passed_over) or 'there is none'}")

    def prune(self, *, keep_last: int) -> None:
        """Delete all but the newest ``keep_last`` checkpoints, never the best or last one."""
        keep = {p for p in (self.pointer(BEST), self.pointer(LAST)) if p is not None}
        saved = self.saved()
        for old in saved[: max(0, len(saved) - keep_last)]:
            if old not in keep:
                shutil.rmtree(old)


def find_resumable(path: str | Path) -> Path:
    """Where resuming from ``path`` reads: a checkpoint folder (``path``, or the folder of a file in
    it), or the ``checkpoints/`` folder of a run. Nothing is loaded, so a wrong path is an error
    before the run starts; ``load_resumable`` reads it."""
    path = Path(path)
    if path.is_file() and path.name in (MODEL_FILE, STATE_FILE):
        path = path.parent
    if (path / STATE_FILE).is_file():
        return path
    root = path / "checkpoints" if (path / "checkpoints").is_dir() else path
    if not CheckpointDir(root).saved() and not (root / LAST).exists():
        raise CheckpointError(f"no checkpoint at {path} (expected a folder with {STATE_FILE}, "
                              f"or a run folder with checkpoints/)")
    return root


def load_resumable(path: str | Path) -> Checkpoint:
    """The checkpoint to resume from ``path`` (``find_resumable``): a checkpoint folder as it is,
    from a run or ``checkpoints/`` folder the newest checkpoint that loads, read once."""
    source = find_resumable(path)
    if (source / STATE_FILE).is_file():
        return load_checkpoint(source)
    return CheckpointDir(source).load_newest_valid()


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint folder from a checkpoint folder, a file inside one, a ``checkpoints/``
    folder or a run folder (their ``last`` checkpoint)."""
    path = Path(path)
    if (path.is_file() and path.name in (MODEL_FILE, STATE_FILE)) or (path.name == SHARDED_DIR and is_sharded(path)):
        path = path.parent
    if (path / STATE_FILE).is_file():
        return path
    for root in (path, path / "checkpoints"):
        last = CheckpointDir(root).pointer(LAST)
        if last is not None:
            return last
    raise CheckpointError(f"no checkpoint at {path} (expected a folder with {STATE_FILE}, "
                          f"or a run folder with checkpoints/{LAST})")


def resolve_weights(path: str | Path) -> Path:
    """A model weights file (or sharded folder) from itself, a checkpoint folder, or a run folder
    (its best checkpoint, else its last)."""
    path = Path(path)
    if path.is_file() or is_sharded(path):
        return path
    chosen = [d.pointer(BEST) or d.pointer(LAST) for d in (CheckpointDir(path), CheckpointDir(path / "checkpoints"))]
    for folder in filter(None, [path, *chosen]):
        if (folder / MODEL_FILE).is_file():
            return folder / MODEL_FILE
        if is_sharded(folder / SHARDED_DIR):
            return folder / SHARDED_DIR
    raise WeightsError(f"no weights at {path} (expected a .safetensors file, a checkpoint folder "
                       f"or a run folder)")


def load_checkpoint(path: str | Path) -> Checkpoint:
    """A checkpoint folder read and checked: full weights loaded, a sharded folder's files checked
    against its index (its tensors are read into the model's shards when resuming)."""
    folder = resolve_checkpoint(path)
    sharded = folder / SHARDED_DIR
    try:
        if is_sharded(sharded):
            model, ema, metadata = None, None, check_sharded(sharded)[1]
        else:
            model, metadata = read_weights(folder / MODEL_FILE)
            ema = read_weights(folder / EMA_FILE)[0] if (folder / EMA_FILE).is_file() else None
    except WeightsError as exc:
        raise CheckpointError(str(exc)) from exc
    try:
        state = torch.load(folder / STATE_FILE, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated zip, unpickling refusal, ...
        raise CheckpointError(f"trainer state {folder / STATE_FILE} is corrupt or truncated: {exc}") from exc
    return Checkpoint(path=folder, model=model, metadata=metadata, state=state, ema=ema,
                      sharded=sharded if model is None else None)
