"""Frame-level AVA mAP as the ActivityNet AVA evaluator computes it.

Rules, from ActivityNet's ``Evaluation/get_ava_performance.py`` and ``Evaluation/ava/``
(``object_detection_evaluation.py``, ``per_image_evaluation.py``, ``metrics.py``):

- each keyframe is one image; only the label map's classes count. Ground truth and detections at
  excluded keyframes are dropped (the exclusions of PySlowFast's ``ava_eval_helper``; the newer
  ActivityNet evaluator lists such keyframes in the ground truth as ``video_id,second`` rows
  instead). Detections at a keyframe the ground truth does not list are ignored; at a listed
  keyframe without boxes of a class they are false positives.
- per keyframe only the 50 highest-scoring detections are kept (``read_csv(..., capacity=50)``),
  then boxes with ``x2 <= x1`` or ``y2 <= y1`` are dropped (``_remove_invalid_boxes``).
- per keyframe and class, detections in descending score order take the ground-truth box of
  their class with the highest IoU (area without +1, as ``np_box_ops.iou``); at IoU >= 0.5 they
  are true positives when that box is not yet taken, otherwise -- also when the best box is taken
  and another would match -- false positives (``_compute_tp_fp_for_single_class``).
- per class, precision and recall run over all its detections by descending score; AP is the
  area under the precision-recall curve with precision made non-increasing
  (``compute_average_precision``, VOC style); 0 without detections, NaN without ground truth.
  mAP is the mean over the classes that have ground truth.

Equal scores are ordered as the detections come (stable sorts); the evaluator's order of ties is
that of its heap and of numpy's unstable argsort, so with tied scores results may differ slightly.
"""
from __future__ import annotations

import math
import os
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Collection, Sequence

import numpy as np
import torch
from torchvision.ops import box_iou

from vislab.data.datasets.ava_files import (ActorBox, Box, Detection, Keyframe, LabelMap, read_annotations,
                                            read_detections, read_exclusions, read_label_map)
from vislab.utils.files import atomic_write_text

MAX_DETECTIONS_PER_KEYFRAME = 50  # get_ava_performance.run_evaluation: read_csv(detections, ..., 50)


@dataclass
class FrameMAP:
    """Frame-level mAP (a fraction) and the AP of each class, NaN for a class without ground truth."""
    mean_ap: float
    per_class: dict[int, float]  # action id -> AP
    groundtruth_boxes: dict[int, int] = field(default_factory=dict)  # action id -> boxes evaluated

    def named(self, label_map: LabelMap) -> dict[str, float]:
        """Class name -> AP."""
        return {label_map.names[class_id]: ap for class_id, ap in self.per_class.items()}


def frame_map(*, groundtruth: dict[Keyframe, list[ActorBox]], detections: Sequence[Detection],
              class_ids: Sequence[int], exclusions: Collection[Keyframe] = (), iou_threshold: float = 0.5,
              max_detections_per_keyframe: int | None = MAX_DETECTIONS_PER_KEYFRAME) -> FrameMAP:
    """AVA frame-level mAP at ``iou_threshold`` over ``class_ids`` (see the module docstring for
    the rules); ``max_detections_per_keyframe=None`` keeps all detections."""
    evaluated, excluded = set(class_ids), set(exclusions)
    truth: dict[tuple[Keyframe, int], list[Box]] = defaultdict(list)
    num_truth = dict.fromkeys(class_ids, 0)
    for keyframe, actors in groundtruth.items():
        if keyframe in excluded:
            continue
        for actor in actors:
            for action in actor.actions:
                if action in evaluated:
                    truth[keyframe, action].append(actor.box)
                    num_truth[action] += 1

    scores: dict[int, list[float]] = defaultdict(list)
    hits: dict[int, list[bool]] = defaultdict(list)
    for keyframe, kept in _detections_per_keyframe(detections, evaluated=evaluated,
                                                   limit=max_detections_per_keyframe).items():
        if keyframe in excluded or keyframe not in groundtruth:
            continue
        per_class: dict[int, list[Detection]] = defaultdict(list)
        for detection in kept:
            x1, y1, x2, y2 = detection.box
            if x1 < x2 and y1 < y2:
                per_class[detection.action].append(detection)
        for action, class_detections in per_class.items():
            scores[action].extend(d.score for d in class_detections)
            hits[action].extend(_match(class_detections, truth.get((keyframe, action), []),
                                       iou_threshold=iou_threshold))

    per_class_ap = {class_id: _average_precision(scores=scores[class_id], hits=hits[class_id],
                                                 num_truth=num_truth[class_id]) for class_id in class_ids}
    with_truth = [ap for ap in per_class_ap.values() if not math.isnan(ap)]
    mean_ap = sum(with_truth) / len(with_truth) if with_truth else math.nan
    return FrameMAP(mean_ap=mean_ap, per_class=per_class_ap, groundtruth_boxes=num_truth)


def _detections_per_keyframe(detections: Sequence[Detection], *, evaluated: set[int],
                             limit: int | None) -> dict[Keyframe, list[Detection]]:
    """The detections of evaluated classes of each keyframe by descending score, at most ``limit``
    of them: those the evaluator's ``read_csv`` heap keeps."""
    grouped: dict[Keyframe, list[Detection]] = defaultdict(list)
    for detection in detections:
        if detection.action in evaluated:
            grouped[detection.keyframe].append(detection)
    return {keyframe: sorted(kept, key=lambda d: -d.score)[:limit] for keyframe, kept in grouped.items()}


def _match(detections: list[Detection], truth: list[Box], *, iou_threshold: float) -> list[bool]:
    """True-positive flags of one class's detections (by descending score) at one keyframe: each
    detection is tested against its highest-IoU ground-truth box only (the first on ties)."""
    if not truth:
        return [False] * len(detections)
    iou = box_iou(torch.tensor([d.box for d in detections], dtype=torch.float64),
                  torch.tensor(truth, dtype=torch.float64))
    best_iou, best_truth = iou.max(dim=1)
    taken = [False] * len(truth)
    flags = []
    for overlap, index in zip(best_iou.tolist(), best_truth.tolist()):
        hit = overlap >= iou_threshold and not taken[index]
        if hit:
            taken[index] = True
        flags.append(hit)
    return flags


def _average_precision(*, scores: list[float], hits: list[bool], num_truth: int) -> float:
    """VOC-style AP as ``metrics.compute_precision_recall`` + ``compute_average_precision``."""
    if num_truth == 0:
        return math.nan
    if not scores:
        return 0.0
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    true_positives = np.cumsum(np.asarray(hits, dtype=np.int64)[order])
    precision = true_positives / np.arange(1, len(order) + 1)
    recall = true_positives / num_truth
    recall = np.concatenate(([0.0], recall, [1.0]))
    precision = np.concatenate(([0.0], precision, [0.0]))
    precision = np.maximum.accumulate(precision[::-1])[::-1]
    steps = np.flatnonzero(recall[1:] != recall[:-1]) + 1
    return float(np.sum((recall[steps] - recall[steps - 1]) * precision[steps]))


def evaluate_files(*, groundtruth: Path, detections: Path, labelmap: Path,
                   exclusions: Path | None = None) -> tuple[FrameMAP, LabelMap]:
    """``frame_map`` of AVA's files: the classes are the label map's; ground truth and detections
    of other classes are skipped, as the evaluator's class whitelist does."""
    label_map = read_label_map(labelmap)
    result = frame_map(groundtruth=read_annotations(groundtruth), detections=read_detections(detections),
                       class_ids=label_map.ids,
                       exclusions=read_exclusions(exclusions) if exclusions is not None else ())
    return result, label_map


def write_per_class_table(path: str | os.PathLike, result: FrameMAP, label_map: LabelMap) -> None:
    """A Markdown table of the classes (id, name, AP in %, ground-truth boxes), then the mAP."""
    lines = ["| id | name | AP (%) | ground-truth boxes |", "|---:|:---|---:|---:|"]
    for class_id, ap in result.per_class.items():
        name = label_map.names[class_id].replace("|", "\\|")
        lines.append(f"| {class_id} | {name} | {format_percent(ap)} | {result.groundtruth_boxes.get(class_id, 0)} |")
    with_truth = sum(not math.isnan(ap) for ap in result.per_class.values())
    lines += ["", f"mAP: {format_percent(result.mean_ap)} % over the {with_truth} of "
                  f"{len(result.per_class)} classes with ground truth", ""]
    atomic_write_text(path, "\n".join(lines))


def format_percent(fraction: float) -> str:
    """``35.21`` for 0.3521; ``n/a`` for NaN."""
    return "n/a" if math.isnan(fraction) else f"{100 * fraction:.2f}"
