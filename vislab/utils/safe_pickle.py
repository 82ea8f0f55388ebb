"""Reading foreign ``.pkl`` checkpoints (detectron2's model zoo, Detectron's) without running code.

Such a file is a pickled dict of numpy arrays. Unpickling calls whatever callables the file
names, so an ordinary ``pickle.load`` of an untrusted file can run arbitrary code. This unpickler
resolves only the globals that rebuild numpy arrays and plain containers; a file that names any
other callable is refused with an error naming it, before anything it names is called.
"""
from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

# (module, name) pairs that rebuild numpy arrays, scalars and dtypes (numpy 1 and 2 spell the
# module differently), Python 2 pickles' byte strings, and ordered dicts
ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("_codecs", "encode"),
    ("collections", "OrderedDict"),
}


class UnsafePickleError(ValueError):
    """A pickle that names a callable outside ``ALLOWED_GLOBALS``."""


class _ArraysOnlyUnpickler(pickle.Unpickler):
    def __init__(self, file, *, source: str):
        super().__init__(file, encoding="latin1")  # Python 2 pickles (Detectron, early detectron2)
        self.source = source

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in ALLOWED_GLOBALS:
            raise UnsafePickleError(
                f"{self.source} names {module}.{name}, which is not a numpy array or plain container; "
                f"refusing to unpickle it (only {', '.join(sorted(f'{m}.{n}' for m, n in ALLOWED_GLOBALS))} "
                f"are allowed)")
        return super().find_class(module, name)


def load_arrays_pickle(path: str | Path) -> Any:
    """The object in ``path``, unpickled with only numpy arrays and plain containers allowed."""
    with open(path, "rb") as file:
        return _ArraysOnlyUnpickler(file, source=str(path)).load()
