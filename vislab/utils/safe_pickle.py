"""Reading pickles from files that may not be trusted without running code.

Unpickling calls whatever callables the file names, so an ordinary ``pickle.load`` of an
untrusted file can run arbitrary code. The unpicklers here resolve only an allow-list of
globals and refuse a file that names any other callable, before anything it names is called:

- foreign ``.pkl`` checkpoints (detectron2's model zoo, Detectron's): pickled dicts of numpy
  arrays;
- the ``.metadata`` file of a torch.distributed.checkpoint folder, which DCP itself reads with a
  plain ``pickle.load``: dataclasses describing tensors and where their bytes lie.
"""
from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any, Callable

import torch

# (module, name) pairs that rebuild numpy arrays, scalars and dtypes (numpy 1 and 2 spell the
# module differently), Python 2 pickles' byte strings, and ordered dicts
ARRAY_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("_codecs", "encode"),
    ("collections", "OrderedDict"),
}
# what a DCP ``.metadata`` file names besides torch dtypes: its own dataclasses (rebuilt field by
# field, nothing called), torch.Size, a path, and torch's lookup of a layout by name
DCP_METADATA_GLOBALS = {
    *(("torch.distributed.checkpoint.metadata", name) for name in (
        "Metadata", "MetadataIndex", "StorageMeta", "TensorProperties", "TensorStorageMetadata",
        "ChunkStorageMetadata", "BytesStorageMetadata", "_MEM_FORMAT_ENCODING")),
    ("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
    ("torch", "Size"), ("torch.serialization", "_get_layout"),
    ("pathlib", "PosixPath"), ("pathlib", "WindowsPath"), ("pathlib", "Path"),
    ("collections", "OrderedDict"),
}


class UnsafePickleError(ValueError):
    """A pickle that names a callable outside its allow-list."""


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file, *, source: str, allowed: Callable[[str, str], bool], what: str):
        super().__init__(file, encoding="latin1")  # Python 2 pickles (Detectron, early detectron2)
        self.source, self.allowed, self.what = source, allowed, what

    def find_class(self, module: str, name: str) -> Any:
        if not self.allowed(module, name):
            raise UnsafePickleError(f"{self.source} names {module}.{name}, which is not part of {self.what}; "
                                    f"refusing to unpickle it")
        return super().find_class(module, name)


def _is_torch_dtype(module: str, name: str) -> bool:
    return module == "torch" and isinstance(getattr(torch, name, None), torch.dtype)


def load_arrays_pickle(path: str | Path) -> Any:
    """The object in ``path``, unpickled with only numpy arrays and plain containers allowed."""
    with open(path, "rb") as file:
        return _RestrictedUnpickler(file, source=str(path), allowed=lambda m, n: (m, n) in ARRAY_GLOBALS,
                                    what="a dict of numpy arrays").load()


def load_dcp_metadata(path: str | Path) -> Any:
    """The ``Metadata`` of a torch.distributed.checkpoint folder (its ``.metadata`` file), unpickled
    with only DCP's metadata classes, torch dtypes and sizes allowed."""
    with open(path, "rb") as file:
        return _RestrictedUnpickler(
            file, source=str(path), what="a torch.distributed.checkpoint metadata file",
            allowed=lambda m, n: (m, n) in DCP_METADATA_GLOBALS or _is_torch_dtype(m, n)).load()
