"""Kinetics-style list files: one ``path label`` or ``path,label`` per line."""
from __future__ import annotations

import os
import re
from pathlib import Path

from vislab.data.datasets.image_folder import DataError

# The label is the text after the last comma or whitespace; the path is everything before it,
# so paths may hold spaces (``a b.mp4 3``) or commas (``a,b.mp4 3``).
_LINE = re.compile(r"(?P<path>.*?)\s*[,\s]\s*(?P<label>[^,\s]+)")


def _parse(line: str, *, list_file: Path, number: int, num_labels: int | None) -> tuple[str, int]:
    match = _LINE.fullmatch(line)
    if match is None or not match["path"]:
        raise DataError(f"{list_file} line {number}: {line!r} has no label; "
                        f"expected 'path label' or 'path,label'")
    try:
        label = int(match["label"])
    except ValueError:
        raise DataError(f"{list_file} line {number}: label {match['label']!r} is not an integer") from None
    if label < 0:
        raise DataError(f"{list_file} line {number}: label {label} is negative")
    if num_labels is not None and label >= num_labels:
        raise DataError(f"{list_file} line {number}: label {label} is out of range: there are {num_labels} "
                        f"classes (labels 0..{num_labels - 1})")
    return match["path"], label


def read_video_list(path: str | os.PathLike, *, root: str | os.PathLike,
                    num_labels: int | None = None) -> list[tuple[Path, int]]:
    """``(root / video path, label)`` for each line of ``path``; blank lines and ``#`` comments
    are skipped. A malformed line, or a label not below ``num_labels`` (when given), raises
    ``DataError`` naming the file and its line number."""
    list_file = Path(path)
    if not list_file.is_file():
        raise DataError(f"video list {list_file} does not exist")
    samples = []
    for number, line in enumerate(list_file.read_text().splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        video, label = _parse(line, list_file=list_file, number=number, num_labels=num_labels)
        samples.append((Path(root) / video, label))
    if not samples:
        raise DataError(f"video list {list_file} lists no videos")
    return samples
