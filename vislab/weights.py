"""Saving and loading model weights as safetensors, with key checks that name what is wrong.

Nothing here executes code from a file: safetensors holds only tensors and string metadata,
PyTorch files are read with ``torch.load(weights_only=True)``, and ``.pkl`` files (detectron2's
model zoo: pickled dicts of numpy arrays) with an unpickler that admits only numpy arrays and
plain containers. A sharded checkpoint folder (torch.distributed.checkpoint, written under FSDP)
reads as one full state dict; its ``.metadata`` pickle goes through an unpickler that admits
only DCP's metadata classes, and its tensors through ``torch.load(weights_only=True)``.
"""
from __future__ import annotations

import contextlib
import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn
from torch.distributed import checkpoint as dcp
from torch.distributed.checkpoint.metadata import TensorStorageMetadata

from vislab.utils.files import atomic_path
from vislab.utils.safe_pickle import UnsafePickleError, load_arrays_pickle, load_dcp_metadata

SHARDED_INDEX = ".metadata"  # DCP's index of a sharded folder
SHARDED_METADATA = "metadata.json"  # vislab's metadata (model, config, classes) beside it


class WeightsError(RuntimeError):
    """Weights that do not fit a model, or a file that is not readable weights."""


@dataclass
class LoadReport:
    """Keys that did not line up when loading a state dict into a model."""

    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def describe(self, limit: int = 20) -> str:
        parts = []
        for title, keys in (("missing", self.missing), ("unexpected", self.unexpected),
                            ("mis-shaped", self.mismatched)):
            if keys:
                shown = ", ".join(keys[:limit]) + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")
                parts.append(f"{len(keys)} {title}: {shown}")
        return "; ".join(parts) if parts else "all keys matched"


TORCH_SUFFIXES = (".pth", ".pt")
FORMATS = {"safetensors": "a safetensors file", "zip": "a PyTorch (zip) file",
           "pickle": "a pickle (a legacy PyTorch file, or a model zoo .pkl)"}
# what each extension promises; a legacy (pickle) PyTorch file keeps .pth / .pt
EXTENSION_FORMATS = {".safetensors": ("safetensors",), ".pkl": ("pickle",), ".pth": ("zip", "pickle"),
                     ".pt": ("zip", "pickle")}


def save_weights(state_dict: dict[str, torch.Tensor], path: str | os.PathLike,
                 *, metadata: dict[str, Any] | None = None) -> None:
    """Write ``state_dict`` atomically in the format ``path``'s extension names: safetensors
    (``metadata`` values stored as JSON strings), or for ``.pth`` / ``.pt`` ``torch.save`` of the
    plain tensor dict (which has no place for metadata)."""
    path = Path(path)
    tensors = {k: v.detach().contiguous().cpu() for k, v in state_dict.items()}
    if path.suffix not in (".safetensors", *TORCH_SUFFIXES):
        raise WeightsError(f"cannot write weights to {path}: name it .safetensors (with metadata) or "
                           f".pth / .pt (a plain tensor dict)")
    with atomic_path(path) as tmp:
        if path.suffix == ".safetensors":
            save_file(tensors, str(tmp), metadata={k: json.dumps(v) for k, v in (metadata or {}).items()})
        else:
            torch.save(tensors, tmp)


def sniff_format(path: Path) -> str | None:
    """What ``path`` holds, from its first bytes: "safetensors" (an 8-byte header length, then
    its JSON), "zip" (PyTorch's format since 1.6), "pickle" (a protocol-2+ pickle: legacy
    ``torch.save``, detectron2's ``.pkl``), or None."""
    with open(path, "rb") as file:
        head = file.read(9)
    if len(head) == 9 and head[8:9] == b"{":
        return "safetensors"
    if head[:4] == b"PK\x03\x04":
        return "zip"
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return "pickle"
    return None


def read_weights(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read tensors and metadata from a safetensors file, or tensors from a PyTorch or ``.pkl``
    file, judged by the file's content rather than its extension (a mismatch is warned about)."""
    path = Path(path)
    if is_sharded(path):
        return read_sharded_weights(path)
    if not path.is_file():
        raise WeightsError(f"weights file {path} does not exist")
    kind = sniff_format(path)
    if kind is None:
        raise WeightsError(f"{path} is not a weights file: it is neither safetensors, a PyTorch file nor a pickle")
    if kind not in EXTENSION_FORMATS.get(path.suffix, (kind,)):
        warnings.warn(f"{path} is {FORMATS[kind]}, not what its extension says; reading it as such", stacklevel=2)
    if kind == "safetensors":
        try:
            with safe_open(str(path), framework="pt") as f:  # one pass: metadata and tensors
                raw_meta = f.metadata() or {}
                tensors = {key: f.get_tensor(key) for key in f.keys()}
        except (SafetensorError, OSError, ValueError) as exc:
            raise WeightsError(f"weights file {path} is corrupt or truncated: {exc}") from exc
        return tensors, {k: _decode(v) for k, v in raw_meta.items()}
    if kind == "pickle" and path.suffix not in TORCH_SUFFIXES:
        obj = _read_arrays_pickle(path)
    else:
        try:
            with open(path, "rb") as file:  # a file object: torch.load judges a path by its extension
                obj = torch.load(file, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises several types for bad or unsafe pickles
            raise WeightsError(f"cannot read {path} as PyTorch weights: {exc}") from exc
    for key in ("state_dict", "model", "model_state"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsError(f"{path} holds no state dict of tensors")
    return obj, {}


def is_sharded(path: Path) -> bool:
    """Whether ``path`` is a torch.distributed.checkpoint folder."""
    return path.is_dir() and (path / SHARDED_INDEX).is_file()


class _CheckedReader(dcp.FileSystemReader):
    """DCP's file reader with the index read by the restricted unpickler."""

    def read_metadata(self, *args: Any, **kwargs: Any) -> Any:
        return load_dcp_metadata(Path(self.path) / SHARDED_INDEX)


@contextlib.contextmanager
def single_process_dcp() -> Iterator[None]:
    """DCP's save and load without a process group, without its warning that they then work in one
    process: that is meant."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is .*single process")
        yield


def load_sharded_tensors(tensors: dict[str, Any], path: Path) -> None:
    """Fill ``tensors`` (a nested dict of tensors or DTensor shards) from the sharded folder ``path``:
    a collective when a process group is up, else this process reads everything it asks for."""
    with single_process_dcp():
        dcp.load(tensors, storage_reader=_CheckedReader(str(path)))


def check_sharded(path: Path) -> tuple[Any, dict[str, Any]]:
    """The DCP index and vislab metadata of a sharded folder, after checking that every file the
    index points into is there and long enough (a save cut short, a copy half made)."""
    try:
        index = load_dcp_metadata(path / SHARDED_INDEX)
    except UnsafePickleError as exc:
        raise WeightsError(str(exc)) from None
    except Exception as exc:  # a truncated or garbled pickle
        raise WeightsError(f"sharded checkpoint {path}: {SHARDED_INDEX} is corrupt or truncated: {exc}") from exc
    for info in index.storage_data.values():
        file = path / info.relative_path
        if not file.is_file() or file.stat().st_size < info.offset + info.length:
            raise WeightsError(f"sharded checkpoint {path}: {info.relative_path} is missing or truncated")
    meta_file = path / SHARDED_METADATA
    return index, (json.loads(meta_file.read_text()) if meta_file.is_file() else {})


def read_sharded_weights(path: Path, *, prefix: str = "model") -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The full tensors saved under ``prefix`` ("model", "ema") in a sharded folder, gathered from
    every process's file into this one process, and the folder's metadata."""
    index, metadata = check_sharded(path)
    tensors = {key: torch.empty(meta.size, dtype=meta.properties.dtype)
               for key, meta in index.state_dict_metadata.items()
               if key.startswith(f"{prefix}.") and isinstance(meta, TensorStorageMetadata)}
    if not tensors:
        held = sorted({key.split(".")[0] for key in index.state_dict_metadata})
        raise WeightsError(f"sharded checkpoint {path} holds no {prefix!r} tensors (it holds {', '.join(held)})")
    load_sharded_tensors(tensors, path)
    return {key.removeprefix(f"{prefix}."): value for key, value in tensors.items()}, metadata


def _read_arrays_pickle(path: Path) -> Any:
    """A ``.pkl`` checkpoint with its numpy arrays as tensors; nothing in it is run."""
    try:
        obj = load_arrays_pickle(path)
    except UnsafePickleError as exc:
        raise WeightsError(str(exc)) from None
    except Exception as exc:  # a truncated or non-pickle file
        raise WeightsError(f"cannot read {path} as a pickled dict of arrays: {exc}") from exc

    def tensors(value: Any) -> Any:
        if isinstance(value, np.ndarray):
            return torch.from_numpy(value.copy())  # a writable, C-ordered copy (0-d arrays stay 0-d)
        if isinstance(value, dict):
            return {k: tensors(v) for k, v in value.items()}
        return value

    return tensors(obj)


def _decode(value: str) -> Any:
    try:
        return json.loads(value)
    except json.JSONDecodeError:
        return value


def check_state_dict(model: nn.Module, state_dict: dict[str, torch.Tensor]) -> LoadReport:
    own = model.state_dict()
    report = LoadReport()
    # BatchNorm's step counter is neither needed by FrozenBN nor required from other codebases
    counter = "num_batches_tracked"
    report.missing = sorted(k for k in own if k not in state_dict and not k.endswith(counter))
    report.unexpected = sorted(k for k in state_dict if k not in own and not k.endswith(counter))
    report.mismatched = sorted(
        f"{k} (file {tuple(v.shape)} vs model {tuple(own[k].shape)})"
        for k, v in state_dict.items() if k in own and own[k].shape != v.shape
    )
    return report


def load_state_dict(model: nn.Module, state_dict: dict[str, torch.Tensor], *, strict: bool = True,
                    source: str = "state dict") -> LoadReport:
    """Load ``state_dict`` into ``model``; with ``strict`` any key problem is an error naming the
    keys, otherwise matching keys load and the report lists the rest."""
    report = check_state_dict(model, state_dict)
    if strict and not report.ok:
        raise WeightsError(f"{source} does not fit {type(model).__name__}: {report.describe()}")
    bad = {name.split(" ")[0] for name in report.mismatched}
    usable = {k: v for k, v in state_dict.items() if k not in bad and k not in report.unexpected}
    model.load_state_dict(usable, strict=False)
    return report


def load_weights(model: nn.Module, path: str | os.PathLike, *, strict: bool = True) -> LoadReport:
    """Load weights from ``path`` (safetensors, or a PyTorch state dict) into ``model``."""
    state_dict, metadata = read_weights(path)
    return load_state_dict(model, state_dict, strict=strict, source=weights_source(path, metadata))


def weights_source(path: str | os.PathLike, metadata: dict[str, Any]) -> str:
    """How messages name a weights file: its path and the model it records."""
    return f"weights file {path}" + (f" (model {metadata['model']})" if "model" in metadata else "")


def load_backbone_weights(model: nn.Module, path: str | os.PathLike) -> LoadReport:
    """Initialise ``model.backbone`` from the ``backbone.*`` tensors of ``path``, as transfer
    learning does: the file may come from a classifier, a detector or a self-supervised
    pre-training run, and whatever else it holds (classifier head, decoder, momentum encoder,
    queue) is left out, and so are the tensors of modules the backbone leaves out (an
    ``nn.Identity`` where the source has a classification-only norm). A backbone with
    ``adapt_pretrained`` (a ViTDet trunk) first fits the tensors to itself. A backbone tensor
    that is missing or does not fit is an error naming it."""
    state_dict, _ = read_weights(path)
    backbone_state = {k.removeprefix("backbone."): v for k, v in state_dict.items() if k.startswith("backbone.")}
    if not backbone_state:
        raise WeightsError(f"pretrained weights {path} hold no backbone.* tensors; convert them with "
                           f"`vislab convert` first")
    if hasattr(model.backbone, "adapt_pretrained"):
        backbone_state = model.backbone.adapt_pretrained(backbone_state)
    backbone_state = _without_left_out_modules(model.backbone, backbone_state)
    report = check_state_dict(model.backbone, backbone_state)
    if not report.ok:
        raise WeightsError(f"pretrained weights {path} do not fit the backbone of "
                           f"{type(model).__name__}: {report.describe()}")
    model.backbone.load_state_dict(backbone_state, strict=False)
    return report


def _without_left_out_modules(module: nn.Module, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state_dict`` without the tensors of direct children that ``module`` has as
    ``nn.Identity`` (e.g. ``norm.weight`` for a detection trunk built with ``final_norm=False``);
    deeper ones (a block's LayerScale) are real mismatches and stay."""
    left_out = {name for name, child in module.named_children() if isinstance(child, nn.Identity)}
    return {k: v for k, v in state_dict.items() if k.split(".")[0] not in left_out}
