"""``vislab ava-eval``: frame-level AVA mAP of a detection CSV, printed or as JSON."""
from __future__ import annotations

import json
import math
from pathlib import Path

from vislab.evaluation.ava import evaluate_files, format_percent


def ava_eval(*, groundtruth: Path, detections: Path, labelmap: Path, exclusions: Path | None = None,
             as_json: bool = False) -> int:
    """Print the mAP and each class's AP (%), or with ``as_json`` one line
    ``{"mAP": ..., "per_class": {name: AP}}`` of fractions, ``null`` for classes without ground
    truth. Returns the exit status, 0."""
    result, label_map = evaluate_files(groundtruth=Path(groundtruth), detections=Path(detections),
                                       labelmap=Path(labelmap),
                                       exclusions=Path(exclusions) if exclusions is not None else None)
    named = result.named(label_map)
    if as_json:
        print(json.dumps({"mAP": _finite_or_none(result.mean_ap),
                          "per_class": {name: _finite_or_none(ap) for name, ap in named.items()}}))
        return 0
    with_truth = sum(not math.isnan(ap) for ap in named.values())
    print(f"mAP@0.5IoU: {format_percent(result.mean_ap)} % ({with_truth} of {len(named)} classes have ground truth)")
    for name, ap in named.items():
        print(f"  {format_percent(ap):>6}  {name}")
    return 0


def _finite_or_none(value: float) -> float | None:
    """JSON has no NaN: a class without ground truth is ``null``."""
    return None if math.isnan(value) else value
