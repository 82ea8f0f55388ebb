"""Checking a dataset's files before a run spends time on them: every validation image's header
(readable, non-empty, the size the annotations claim), every validation video's container. A bad
file is found when the run starts, not after the first epoch of training."""
from __future__ import annotations

import contextlib
import os
import warnings
from typing import Iterable, Iterator

from PIL import Image, UnidentifiedImageError

from vislab.data.errors import BadImageError, DataError


@contextlib.contextmanager
def open_image(path: str | os.PathLike) -> Iterator[Image.Image]:
    """``Image.open(path)``, whatever goes wrong while it is read a ``BadImageError`` naming the file."""
    try:
        with Image.open(path) as image:
            yield image
    except Image.DecompressionBombError as exc:
        raise BadImageError(f"cannot read image {path}: it has more pixels than PIL's decompression-bomb "
                            f"limit of {Image.MAX_IMAGE_PIXELS} ({exc})") from exc
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise BadImageError(f"cannot read image {path}: {exc}") from exc


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """``(width, height)`` from the file's header and a structural check (``Image.verify``)."""
    with open_image(path) as image:
        size = image.size
        image.verify()
    if min(size) < 1:
        raise BadImageError(f"image {path} is {size[0]}x{size[1]} pixels: it has no pixels to read")
    return size


def report_bad_files(problems: list[str], *, what: str, skip_bad: bool,
                     error: type[Exception] = BadImageError) -> None:
    """Raise ``error`` with the first of ``problems`` (and their count), or with ``skip_bad`` warn
    that the files will be skipped."""
    if not problems:
        return
    more = f" ({len(problems) - 1} more {what} files are bad)" if len(problems) > 1 else ""
    if not skip_bad:
        raise error(f"{problems[0]}{more}; fix or remove them, or set data.skip_bad=true to skip them")
    warnings.warn(f"{len(problems)} {what} files will be skipped (data.skip_bad=true); the first: {problems[0]}",
                  stacklevel=2)


def check_images(paths: Iterable[str | os.PathLike], *, what: str, skip_bad: bool,
                 claimed_sizes: dict[str, tuple[int, int]] | None = None, claimed_by: str = "") -> None:
    """Check each image's header; a size other than ``claimed_sizes[str(path)]`` is always an
    error naming the file and ``claimed_by``."""
    problems = []
    for path in paths:
        try:
            size = image_size(path)
        except BadImageError as exc:
            problems.append(str(exc))
            continue
        claimed = (claimed_sizes or {}).get(str(path))
        if claimed is not None:
            check_claimed_size(path, size=size, claimed=claimed, claimed_by=claimed_by)
    report_bad_files(problems, what=what, skip_bad=skip_bad)


def check_claimed_size(path: str | os.PathLike, *, size: tuple[int, int], claimed: tuple[int, int],
                       claimed_by: str) -> None:
    """An image whose ``(width, height)`` is not what ``claimed_by`` (an annotation file) says
    would get misplaced boxes: an error naming both."""
    if size != claimed:
        raise DataError(f"image {path} is {size[0]}x{size[1]} pixels but {claimed_by} says "
                        f"{claimed[0]}x{claimed[1]}")
