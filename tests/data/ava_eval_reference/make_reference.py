"""Make tests/data/ava_eval_reference: a random AVA case and the ActivityNet evaluator's numbers.

Run from a folder holding ActivityNet's Evaluation/ (get_ava_performance.py, ava/):
    python make_reference.py OUT_DIR
"""
import json
import logging
import random
import sys
from pathlib import Path

import numpy as np

np.float = float  # shims for numpy 2: the evaluator's metrics.py uses the removed aliases
np.NAN = np.nan
sys.path[:0] = ["Evaluation", "Evaluation/ava"]
import get_ava_performance  # noqa: E402
from ava import object_detection_evaluation  # noqa: E402

out = Path(sys.argv[1])
out.mkdir(parents=True, exist_ok=True)
rng = random.Random(14)
CLASSES = {1: "bend/bow (at the waist)", 4: "dance", 7: "jump/leap"}
OTHER_CLASS = 9  # in the ground truth, not in the label map

(out / "labelmap.pbtxt").write_text("".join(f'item {{\n  name: "{n}"\n  id: {i}\n}}\n' for i, n in CLASSES.items()))


def jitter(box, amount):
    x1, y1, x2, y2 = (min(1.0, max(0.0, v + rng.uniform(-amount, amount))) for v in box)
    return min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2)


def random_box():
    x1, y1 = rng.uniform(0, 0.7), rng.uniform(0, 0.7)
    return x1, y1, x1 + rng.uniform(0.1, 0.3), y1 + rng.uniform(0.1, 0.3)


def fmt(box):
    return ",".join(f"{v:.3f}" for v in box)


keyframes = [(f"vid{v}", 902 + 3 * s) for v in range(3) for s in range(7)][:20]
gt_rows, det_rows, used_scores = [], [], set()


def score(base):
    while True:  # unique scores: tie order is unspecified in the evaluator
        s = round(min(1.0, max(0.0, base + rng.uniform(-0.35, 0.35))), 6)
        if s not in used_scores:
            used_scores.add(s)
            return s


for k, (video, second) in enumerate(keyframes):
    if k == 5:  # a keyframe without boxes: detections there are false positives
        gt_rows.append(f"{video},{second:04d}")
        for _ in range(2):
            det_rows.append(f"{video},{second:04d},{fmt(random_box())},{rng.choice(list(CLASSES))},{score(0.5)}")
        continue
    people = [random_box() for _ in range(rng.randint(1, 4))]
    for person_id, box in enumerate(people):
        actions = rng.sample([1, 4, 7, OTHER_CLASS], rng.randint(1, 2))
        for action in actions:
            gt_rows.append(f"{video},{second:04d},{fmt(box)},{action},{person_id}")
        guesses = [jitter(box, 0.04)] + ([jitter(box, 0.12)] if rng.random() < 0.4 else [])
        for guess in guesses:
            for action in CLASSES:
                det_rows.append(f"{video},{second:04d},{fmt(guess)},{action},{score(0.75 if action in actions else 0.3)}")
    extra = 20 if k == 7 else rng.randint(0, 2)  # k == 7: over 50 detections, the evaluator keeps 50 best
    for _ in range(extra):
        box = random_box()
        for action in CLASSES:
            det_rows.append(f"{video},{second:04d},{fmt(box)},{action},{score(0.6 if k == 7 else 0.2)}")
det_rows.append(f"vid9,0902,{fmt(random_box())},1,{score(0.9)}")  # keyframe not in the ground truth: ignored
det_rows.append(f"vid0,0902,0.500,0.500,0.500,0.700,4,{score(0.95)}")  # zero width: dropped
rng.shuffle(det_rows)
(out / "groundtruth.csv").write_text("\n".join(gt_rows) + "\n")
(out / "detections.csv").write_text("\n".join(det_rows) + "\n")
excluded = [keyframes[2], keyframes[11]]
(out / "exclusions.csv").write_text("".join(f"{v},{s:04d}\n" for v, s in excluded))
(out / "groundtruth_without_excluded.csv").write_text(
    "\n".join(r for r in gt_rows if tuple(r.split(",")[:2]) not in {(v, f"{s:04d}") for v, s in excluded}) + "\n")

captured = []
evaluate = object_detection_evaluation.PascalDetectionEvaluator.evaluate
object_detection_evaluation.PascalDetectionEvaluator.evaluate = lambda self: captured.append(evaluate(self)) or captured[-1]
logging.disable(logging.INFO)


def run(groundtruth):
    with open(out / "labelmap.pbtxt") as l, open(out / groundtruth) as g, open(out / "detections.csv") as d:
        get_ava_performance.run_evaluation(l, g, d)
    metrics = captured[-1]
    prefix = "PascalBoxes_PerformanceByCategory/AP@0.5IOU/"
    return {"mAP": float(metrics["PascalBoxes_Precision/mAP@0.5IOU"]),
            "per_class": {n: float(metrics[prefix + n]) for n in CLASSES.values()}}


expected = {"groundtruth.csv": run("groundtruth.csv"),
            "groundtruth_without_excluded.csv": run("groundtruth_without_excluded.csv")}
(out / "expected.json").write_text(json.dumps(expected, indent=2) + "\n")
print(json.dumps(expected, indent=2), len(det_rows), "detections,", len(gt_rows), "ground-truth rows")
