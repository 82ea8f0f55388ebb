"""The errors of reading a dataset: what the CLI reports as bad input, naming the file."""
from __future__ import annotations


class BadImageError(RuntimeError):
    """An image file that cannot be decoded."""


class DataError(FileNotFoundError):
    """A dataset path that is missing or holds no usable files."""
