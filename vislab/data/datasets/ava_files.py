"""AVA's file formats: label maps, box CSVs (annotations, person proposals, detections), excluded
keyframes and PySlowFast's frame lists.

A keyframe is ``(video_id, second)``: AVA annotates one frame per second, from second 902 to 1798
of each 15-minute clip. Boxes are ``(x1, y1, x2, y2)`` normalised to [0, 1], as in the CSVs.
Every malformed line raises ``DataError`` naming the file and its line number.
"""
from __future__ import annotations

import csv
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

from vislab.data.datasets.image_folder import DataError
from vislab.utils.files import atomic_write_text

Keyframe = tuple[str, int]  # (video_id, second)
Box = tuple[float, float, float, float]  # x1, y1, x2, y2 in [0, 1]

FRAME_LIST_HEADER = ("original_vido_id", "video_id", "frame_id", "path", "labels")  # sic, as PySlowFast writes it


@dataclass(frozen=True)
class LabelMap:
    """Action id -> name, in file order."""
    names: dict[int, str]
    path: Path

    @property
    def ids(self) -> list[int]:
        return list(self.names)


@dataclass(frozen=True)
class ActorBox:
    """One annotated person at a keyframe, with all the actions of its rows (sorted, unique)."""
    box: Box
    actions: tuple[int, ...]
    person_id: int | None


@dataclass(frozen=True)
class ScoredBox:
    """A person proposal of a detector."""
    box: Box
    score: float


@dataclass(frozen=True)
class Detection:
    """One scored action of one box, a row of a detection CSV."""
    keyframe: Keyframe
    box: Box
    action: int
    score: float


# -- label maps ------------------------------------------------------------------------------------

_ITEM_START = re.compile(r"item\s*\{")
_FIELD = re.compile(r"(?P<key>\w+)\s*:\s*(?P<value>.*)")
_QUOTED = re.compile(r'"(?P<text>[^"]*)"|\'(?P<single>[^\']*)\'')


def read_label_map(path: str | os.PathLike) -> LabelMap:
    """An AVA ``.pbtxt`` label map: ``item { name: "..." id: N }`` blocks, one field a line. The id
    may be spelled ``label_id`` (``ava_action_list_v2.2.pbtxt``), as the ActivityNet evaluator's
    ``read_labelmap`` accepts; other fields (``label_type``) are ignored."""
    label_file = _existing(path, what="label map")
    names: dict[int, str] = {}
    item: dict[str, tuple[str, int]] | None = None  # field -> (value, line number)
    item_line = 0
    for number, line in enumerate(label_file.read_text().splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        where = f"{label_file} line {number}"
        if _ITEM_START.fullmatch(line):
            if item is not None:
                raise DataError(f"{where}: 'item {{' inside the item of line {item_line}; expected '}}' first")
            item, item_line = {}, number
        elif line == "}":
            if item is None:
                raise DataError(f"{where}: '}}' without an open 'item {{'")
            class_id, name = _label_item(item, label_file=label_file, item_line=item_line, known=names)
            names[class_id] = name
            item = None
        elif (field := _FIELD.fullmatch(line)) is not None:
            if item is None:
                raise DataError(f"{where}: {line!r} is outside an 'item {{ ... }}' block")
            item[field["key"]] = (field["value"].strip(), number)
        else:
            raise DataError(f"{where}: cannot parse {line!r}; expected 'item {{', 'name: \"...\"', "
                            f"'id: N' or '}}'")
    if item is not None:
        raise DataError(f"{label_file} line {item_line}: the item is not closed with '}}'")
    if not names:
        raise DataError(f"label map {label_file} has no items")
    return LabelMap(names=names, path=label_file)


def _label_item(item: dict[str, tuple[str, int]], *, label_file: Path, item_line: int,
                known: dict[int, str]) -> tuple[int, str]:
    """(id, name) of one parsed ``item { ... }`` that starts at line ``item_line``; its id must not
    be among the ``known`` ones."""
    if "name" not in item:
        raise DataError(f"{label_file} line {item_line}: the item has no name")
    id_key = "id" if "id" in item else "label_id"
    if id_key not in item:
        raise DataError(f"{label_file} line {item_line}: the item has no id (or label_id)")
    id_text, id_line = item[id_key]
    try:
        class_id = int(id_text)
    except ValueError:
        raise DataError(f"{label_file} line {id_line}: id {id_text!r} is not an integer") from None
    if class_id in known:
        raise DataError(f"{label_file} line {id_line}: id {class_id} is given twice "
                        f"(its first name is {known[class_id]!r})")
    name_text, name_line = item["name"]
    quoted = _QUOTED.fullmatch(name_text)
    if quoted is None:
        raise DataError(f"{label_file} line {name_line}: name {name_text} is not a quoted string")
    return class_id, quoted["text"] if quoted["text"] is not None else quoted["single"]


# -- box CSVs --------------------------------------------------------------------------------------

def read_annotations(path: str | os.PathLike, *,
                     label_map: LabelMap | None = None) -> dict[Keyframe, list[ActorBox]]:
    """Ground truth of AVA v2.x (``ava_train_v2.2.csv``): rows ``video_id,second,x1,y1,x2,y2,
    action_id,person_id`` without header; the person_id column may be missing (older files) and the
    action_id empty (a box without action). Rows of one box -- same keyframe and the same four
    coordinate strings, as PySlowFast's ``ava_helper.parse_bboxes_file`` keys them -- merge into one
    ``ActorBox`` (the first row's person_id is kept). A row of only ``video_id,second`` is a
    keyframe without boxes, as the ActivityNet evaluator's ``read_csv`` reads it. Keyframes are in
    file order, boxes in order of first appearance. With ``label_map``, an action id it lacks is
    an error."""
    csv_file = _existing(path, what="annotation file")
    actions: dict[Keyframe, dict[tuple[str, ...], tuple[Box, set[int], int | None]]] = {}
    for where, row in _rows(csv_file):
        if len(row) not in (2, 7, 8):
            raise DataError(f"{where}: {len(row)} columns; expected video_id,second,x1,y1,x2,y2,action_id"
                            f"[,person_id] (or video_id,second for a keyframe without boxes)")
        boxes = actions.setdefault(_keyframe(row, where=where), {})
        if len(row) == 2:
            continue
        coordinates = tuple(row[2:6])
        person_id = _integer(row[7], what="person_id", where=where) if len(row) == 8 and row[7] else None
        if coordinates not in boxes:
            boxes[coordinates] = (_box(coordinates, where=where), set(), person_id)
        if row[6]:
            action = _integer(row[6], what="action_id", where=where)
            if label_map is not None and action not in label_map.names:
                raise DataError(f"{where}: action id {action} is not in the label map {label_map.path} "
                                f"({_describe_ids(label_map.ids)})")
            boxes[coordinates][1].add(action)
    return {keyframe: [ActorBox(box=box, actions=tuple(sorted(ids)), person_id=person_id)
                       for box, ids, person_id in boxes.values()]
            for keyframe, boxes in actions.items()}


def read_exclusions(path: str | os.PathLike) -> set[Keyframe]:
    """Keyframes left out of evaluation, rows ``video_id,second``
    (``ava_val_excluded_timestamps_v2.2.csv``)."""
    csv_file = _existing(path, what="exclusions file")
    excluded = set()
    for where, row in _rows(csv_file):
        if len(row) != 2:
            raise DataError(f"{where}: {len(row)} columns; expected video_id,second")
        excluded.add(_keyframe(row, where=where))
    return excluded


def read_proposals(path: str | os.PathLike, *, score_threshold: float = 0.0) -> dict[Keyframe, list[ScoredBox]]:
    """Person proposals (PySlowFast's ``ava_val_predicted_boxes.csv``): rows ``video_id,second,x1,
    y1,x2,y2,action_id,score`` whose 7th column is ignored. Rows of one box merge as in
    ``read_annotations`` (the first row's score is kept); boxes scoring below ``score_threshold``
    are dropped, as PySlowFast's ``DETECTION_SCORE_THRESH`` does, and a keyframe left without
    boxes is absent."""
    csv_file = _existing(path, what="proposal file")
    proposals: dict[Keyframe, dict[tuple[str, ...], ScoredBox]] = {}
    for where, row in _rows(csv_file):
        if len(row) != 8:
            raise DataError(f"{where}: {len(row)} columns; expected video_id,second,x1,y1,x2,y2,action_id,score")
        keyframe, coordinates = _keyframe(row, where=where), tuple(row[2:6])
        box = _box(coordinates, where=where)
        score = _score(row[7], where=where)
        if score >= score_threshold:
            proposals.setdefault(keyframe, {}).setdefault(coordinates, ScoredBox(box=box, score=score))
    return {keyframe: list(boxes.values()) for keyframe, boxes in proposals.items()}


def read_detections(path: str | os.PathLike, *, label_map: LabelMap | None = None) -> list[Detection]:
    """Action detections as the ActivityNet evaluator reads them: rows ``video_id,second,x1,y1,x2,
    y2,action_id,score``, one per scored action of a box, in file order. With ``label_map``, an
    action id it lacks is an error (the evaluator itself skips such rows)."""
    csv_file = _existing(path, what="detection file")
    detections = []
    for where, row in _rows(csv_file):
        if len(row) != 8:
            raise DataError(f"{where}: {len(row)} columns; expected video_id,second,x1,y1,x2,y2,action_id,score")
        action = _integer(row[6], what="action_id", where=where)
        if label_map is not None and action not in label_map.names:
            raise DataError(f"{where}: action id {action} is not in the label map {label_map.path} "
                            f"({_describe_ids(label_map.ids)})")
        detections.append(Detection(keyframe=_keyframe(row, where=where), box=_box(row[2:6], where=where),
                                    action=action, score=_score(row[7], where=where)))
    return detections


def write_detections(path: str | os.PathLike, detections: Iterable[Detection]) -> None:
    """Write a detection CSV, atomically: seconds zero-padded to 4 digits as AVA's CSVs have them,
    box coordinates with 3 decimals as PySlowFast's ``ava_eval_helper.write_results`` writes them,
    scores with 6 decimals (PySlowFast's 4 would tie many scores)."""
    lines = [f"{d.keyframe[0]},{d.keyframe[1]:04d},{d.box[0]:.3f},{d.box[1]:.3f},{d.box[2]:.3f},{d.box[3]:.3f},"
             f"{d.action},{d.score:.6f}\n" for d in detections]
    atomic_write_text(path, "".join(lines))


# -- PySlowFast frame lists --------------------------------------------------------------------------

def read_frame_list(path: str | os.PathLike, *, root: str | os.PathLike) -> dict[str, list[Path]]:
    """PySlowFast's ``frame_lists/{train,val}.csv``: the header ``original_vido_id video_id
    frame_id path labels``, then space-separated rows ``name index frame_id path labels``.
    Returns video name -> ``root / path`` of its frames ordered by frame_id, which must run
    0..n-1 without gaps (``ava_helper.load_image_lists`` indexes frames by position)."""
    list_file = _existing(path, what="frame list")
    lines = list_file.read_text().splitlines()
    if not lines or tuple(lines[0].split()) != FRAME_LIST_HEADER:
        found = repr(lines[0]) if lines else "nothing"
        raise DataError(f"{list_file} line 1: expected the header {' '.join(FRAME_LIST_HEADER)!r}, found {found}")
    frames: dict[str, dict[int, Path]] = {}
    first_lines: dict[str, int] = {}
    for number, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        where = f"{list_file} line {number}"
        row = line.split()
        if len(row) != len(FRAME_LIST_HEADER):
            raise DataError(f"{where}: {len(row)} columns; expected {len(FRAME_LIST_HEADER)} "
                            f"({' '.join(FRAME_LIST_HEADER)})")
        video, frame_id = row[0], _integer(row[2], what="frame_id", where=where)
        video_frames = frames.setdefault(video, {})
        first_lines.setdefault(video, number)
        if frame_id in video_frames:
            raise DataError(f"{where}: frame_id {frame_id} of video {video} is listed twice")
        video_frames[frame_id] = Path(root) / row[3]
    for video, video_frames in frames.items():
        missing = sorted(set(range(len(video_frames))) - set(video_frames))
        if missing:
            raise DataError(f"{list_file} line {first_lines[video]}: the frame ids of video {video} are not "
                            f"0..{len(video_frames) - 1} without gaps (frame_id {missing[0]} is missing)")
    return {video: [video_frames[i] for i in range(len(video_frames))] for video, video_frames in frames.items()}


def timestamp_to_frame(second: int, *, fps: int, first_second: int) -> int:
    """Index of the frame at ``second`` among frames extracted at ``fps`` from ``first_second`` on:
    PySlowFast's ``sec_to_frame`` with AVA's fps=30, first_second=900."""
    return (second - first_second) * fps


# -- shared row parsing ------------------------------------------------------------------------------

def _existing(path: str | os.PathLike, *, what: str) -> Path:
    file = Path(path)
    if not file.is_file():
        raise DataError(f"{what} {file} does not exist")
    return file


def _rows(csv_file: Path) -> Iterator[tuple[str, list[str]]]:
    """(``"FILE line N"``, fields) of each non-blank row."""
    with open(csv_file, newline="") as f:
        reader = csv.reader(f)
        for row in reader:
            if row and any(field.strip() for field in row):
                yield f"{csv_file} line {reader.line_num}", [field.strip() for field in row]


def _keyframe(row: list[str], *, where: str) -> Keyframe:
    if not row[0]:
        raise DataError(f"{where}: the video_id is empty")
    return row[0], _integer(row[1], what="second", where=where)


def _integer(text: str, *, what: str, where: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise DataError(f"{where}: {what} {text!r} is not an integer") from None


def _box(coordinates: Iterable[str], *, where: str) -> Box:
    values = []
    for name, text in zip(("x1", "y1", "x2", "y2"), coordinates):
        try:
            value = float(text)
        except ValueError:
            raise DataError(f"{where}: {name} {text!r} is not a number") from None
        if not 0.0 <= value <= 1.0:  # also false for NaN
            raise DataError(f"{where}: {name} {text} is outside [0, 1]; AVA boxes are normalised")
        values.append(value)
    x1, y1, x2, y2 = values
    if x2 < x1 or y2 < y1:
        raise DataError(f"{where}: box ({x1}, {y1}, {x2}, {y2}) has x2 < x1 or y2 < y1")
    return x1, y1, x2, y2


def _score(text: str, *, where: str) -> float:
    try:
        score = float(text)
    except ValueError:
        raise DataError(f"{where}: score {text!r} is not a number") from None
    if not math.isfinite(score):
        raise DataError(f"{where}: score {text!r} is not finite")
    return score


def _describe_ids(ids: list[int]) -> str:
    """``60 ids: 1, 3, 4, ..., 80`` -- short enough for an error message."""
    shown = ", ".join(map(str, ids)) if len(ids) <= 6 else f"{', '.join(map(str, ids[:3]))}, ..., {ids[-1]}"
    return f"{len(ids)} id{'s' if len(ids) != 1 else ''}: {shown}"
