"""Frame-level AVA mAP: hand-worked cases and the ActivityNet evaluator's numbers on a random case."""
import json
import math
from pathlib import Path

import pytest

from vislab.data.datasets.ava_files import (ActorBox, Detection, read_annotations, read_label_map,
                                            write_detections)
from vislab.evaluation.ava import evaluate_files, frame_map, write_per_class_table
from vislab.evaluation.ava_command import ava_eval

REFERENCE = Path(__file__).parent / "data" / "ava_eval_reference"

# Boxes far apart from each other (IoU 0 between any two).
A, B, C = (0.0, 0.0, 0.2, 0.2), (0.4, 0.4, 0.6, 0.6), (0.8, 0.8, 1.0, 1.0)


def truth(keyframe, box, *actions):
    return keyframe, ActorBox(box=box, actions=tuple(sorted(actions)), person_id=None)


def groundtruth_of(*entries):
    result = {}
    for keyframe, actor in entries:
        result.setdefault(keyframe, []).append(actor)
    return result


def detect(keyframe, box, action, score):
    return Detection(keyframe=keyframe, box=box, action=action, score=score)


K1, K2, K3 = ("vid", 902), ("vid", 903), ("vid", 904)


def test_groundtruth_as_detections_scores_one():
    groundtruth = read_annotations(REFERENCE / "groundtruth.csv")
    detections = [detect(keyframe, actor.box, action, 1.0)
                  for keyframe, actors in groundtruth.items() for actor in actors for action in actor.actions]
    result = frame_map(groundtruth=groundtruth, detections=detections, class_ids=[1, 4, 7])
    assert result.mean_ap == 1.0
    assert result.per_class == {1: 1.0, 4: 1.0, 7: 1.0}


def test_two_classes_worked_by_hand():
    groundtruth = groundtruth_of(truth(K1, A, 1), truth(K2, B, 1, 2))
    detections = [
        # class 1, 2 ground-truth boxes; by score: TP (A), FP (C), TP (B)
        # precision 1, 1/2, 2/3 at recall 1/2, 1/2, 1 -> AP = 1/2 * 1 + 1/2 * 2/3 = 5/6
        detect(K1, A, 1, 0.9), detect(K1, C, 1, 0.8), detect(K2, B, 1, 0.7),
        # class 2, 1 ground-truth box; by score: FP (A), TP (B)
        # precision 0, 1/2 at recall 0, 1 -> AP = 1 * 1/2
        detect(K1, A, 2, 0.95), detect(K2, B, 2, 0.6),
    ]
    result = frame_map(groundtruth=groundtruth, detections=detections, class_ids=[1, 2])
    assert result.per_class == pytest.approx({1: 5 / 6, 2: 1 / 2})
    assert result.mean_ap == pytest.approx((5 / 6 + 1 / 2) / 2)  # unweighted: 2/3
    assert result.groundtruth_boxes == {1: 2, 2: 1}


def test_precision_is_made_non_increasing():
    # 4 ground-truth boxes; by score TP, FP, FP, TP, TP: precision 1, 1/2, 1/3, 1/2, 3/5 at recall
    # 1/4, 1/4, 1/4, 1/2, 3/4. Made non-increasing, recall 1/2 gets precision 3/5:
    # AP = 1/4 * 1 + 1/4 * 3/5 + 1/4 * 3/5 = 0.55 (0.525 without the envelope).
    keyframes = [("vid", 902 + i) for i in range(4)]
    groundtruth = groundtruth_of(*(truth(k, A, 1) for k in keyframes))
    detections = [detect(keyframes[0], A, 1, 0.9), detect(keyframes[0], B, 1, 0.8), detect(keyframes[1], B, 1, 0.7),
                  detect(keyframes[1], A, 1, 0.6), detect(keyframes[2], A, 1, 0.5)]
    assert frame_map(groundtruth=groundtruth, detections=detections, class_ids=[1]).mean_ap == pytest.approx(0.55)


def test_duplicate_detections_of_one_box_are_false_positives():
    groundtruth = groundtruth_of(truth(K1, A, 1), truth(K1, B, 1))
    # TP, FP (A again), TP: precision 1, 1/2, 2/3 at recall 1/2, 1/2, 1 -> 5/6
    detections = [detect(K1, A, 1, 0.9), detect(K1, A, 1, 0.8), detect(K1, B, 1, 0.7)]
    assert frame_map(groundtruth=groundtruth, detections=detections, class_ids=[1]).mean_ap == pytest.approx(5 / 6)


def test_a_detection_whose_best_box_is_taken_is_false_even_if_another_matches():
    first, second = (0.0, 0.0, 0.5, 0.5), (0.1, 0.0, 0.6, 0.5)
    groundtruth = groundtruth_of(truth(K1, first, 1), truth(K1, second, 1))
    # The second detection overlaps `first` by 0.852 and `second` by 0.786; `first` is taken, so it
    # is a false positive, as per_image_evaluation does: AP = 1/2 * 1.
    detections = [detect(K1, first, 1, 0.9), detect(K1, (0.04, 0.0, 0.54, 0.5), 1, 0.8)]
    assert frame_map(groundtruth=groundtruth, detections=detections, class_ids=[1]).mean_ap == pytest.approx(0.5)


@pytest.mark.parametrize("width, expected", [(0.249, 0.0), (0.25, 1.0), (0.251, 1.0)])
def test_iou_threshold_is_inclusive(width, expected):
    groundtruth = groundtruth_of(truth(K1, (0.0, 0.0, 0.5, 0.5), 1))
    detections = [detect(K1, (0.0, 0.0, width, 0.5), 1, 0.9)]  # IoU = width / 0.5, exactly 0.5 at 0.25
    assert frame_map(groundtruth=groundtruth, detections=detections, class_ids=[1]).mean_ap == expected


def test_excluded_keyframes_do_not_count():
    groundtruth = groundtruth_of(truth(K1, A, 1), truth(K2, A, 1))
    detections = [detect(K1, A, 1, 0.5), detect(K2, B, 1, 0.9)]  # K2: a missed box and a false positive
    assert frame_map(groundtruth=groundtruth, detections=detections, class_ids=[1]).mean_ap == pytest.approx(0.25)
    result = frame_map(groundtruth=groundtruth, detections=detections, class_ids=[1], exclusions={K2})
    assert result.mean_ap == 1.0
    assert result.groundtruth_boxes == {1: 1}


def test_class_without_groundtruth_is_nan_and_left_out_of_the_mean():
    groundtruth = groundtruth_of(truth(K1, A, 1))
    detections = [detect(K1, A, 1, 0.9), detect(K1, A, 2, 0.9)]
    result = frame_map(groundtruth=groundtruth, detections=detections, class_ids=[1, 2, 3])
    assert result.per_class[1] == 1.0 and math.isnan(result.per_class[2]) and math.isnan(result.per_class[3])
    assert result.mean_ap == 1.0
    assert math.isnan(frame_map(groundtruth=groundtruth, detections=detections, class_ids=[2]).mean_ap)


def test_class_with_groundtruth_but_no_detections_scores_zero():
    groundtruth = groundtruth_of(truth(K1, A, 1), truth(K1, B, 2))
    result = frame_map(groundtruth=groundtruth, detections=[detect(K1, A, 1, 0.9)], class_ids=[1, 2])
    assert result.per_class == {1: 1.0, 2: 0.0}
    assert result.mean_ap == 0.5


def test_detections_at_unknown_keyframes_are_ignored_at_empty_ones_false():
    groundtruth = groundtruth_of(truth(K1, A, 1))
    groundtruth[K2] = []  # listed without boxes, as a `video_id,second` row
    unknown = [detect(K1, A, 1, 0.5), detect(K3, A, 1, 0.9)]
    assert frame_map(groundtruth=groundtruth, detections=unknown, class_ids=[1]).mean_ap == 1.0
    empty = [detect(K1, A, 1, 0.5), detect(K2, A, 1, 0.9)]
    assert frame_map(groundtruth=groundtruth, detections=empty, class_ids=[1]).mean_ap == 0.5


def test_classes_outside_class_ids_are_skipped():
    groundtruth = groundtruth_of(truth(K1, A, 1, 9))
    detections = [detect(K1, A, 1, 0.5), detect(K1, B, 9, 0.9)]
    result = frame_map(groundtruth=groundtruth, detections=detections, class_ids=[1])
    assert result.per_class == {1: 1.0}


def test_only_50_detections_per_keyframe_count():
    groundtruth = groundtruth_of(truth(K1, A, 1))
    misses = [detect(K1, C, 1, 0.5 + i / 100) for i in range(50)]
    detections = misses + [detect(K1, A, 1, 0.1)]  # the 51st by score: dropped, as the evaluator's read_csv does
    assert frame_map(groundtruth=groundtruth, detections=detections, class_ids=[1]).mean_ap == 0.0
    uncapped = frame_map(groundtruth=groundtruth, detections=detections, class_ids=[1], max_detections_per_keyframe=None)
    assert uncapped.mean_ap == pytest.approx(1 / 51)


def test_empty_detection_boxes_are_dropped():
    groundtruth = groundtruth_of(truth(K1, A, 1))
    detections = [detect(K1, (0.5, 0.5, 0.5, 0.7), 1, 0.9), detect(K1, A, 1, 0.8)]
    assert frame_map(groundtruth=groundtruth, detections=detections, class_ids=[1]).mean_ap == 1.0


def test_matches_the_activitynet_evaluator():
    expected = json.loads((REFERENCE / "expected.json").read_text())
    files = dict(detections=REFERENCE / "detections.csv", labelmap=REFERENCE / "labelmap.pbtxt")
    runs = [(dict(groundtruth=REFERENCE / "groundtruth.csv"), expected["groundtruth.csv"]),
            (dict(groundtruth=REFERENCE / "groundtruth.csv", exclusions=REFERENCE / "exclusions.csv"),
             expected["groundtruth_without_excluded.csv"]),
            (dict(groundtruth=REFERENCE / "groundtruth_without_excluded.csv"), expected["groundtruth_without_excluded.csv"])]
    for arguments, reference in runs:
        result, label_map = evaluate_files(**arguments, **files)
        assert result.mean_ap == pytest.approx(reference["mAP"], abs=1e-6)
        assert result.named(label_map) == pytest.approx(reference["per_class"], abs=1e-6)


def test_per_class_table(tmp_path):
    label_map = read_label_map(REFERENCE / "labelmap.pbtxt")
    groundtruth = groundtruth_of(truth(K1, A, 1), truth(K1, B, 1))
    result = frame_map(groundtruth=groundtruth, detections=[detect(K1, A, 1, 0.9)], class_ids=label_map.ids)
    write_per_class_table(tmp_path / "ap.md", result, label_map)
    assert (tmp_path / "ap.md").read_text().splitlines() == [
        "| id | name | AP (%) | ground-truth boxes |", "|---:|:---|---:|---:|",
        "| 1 | bend/bow (at the waist) | 50.00 | 2 |", "| 4 | dance | n/a | 0 |", "| 7 | jump/leap | n/a | 0 |",
        "", "mAP: 50.00 % over the 1 of 3 classes with ground truth"]


def test_ava_eval_command(tmp_path, capsys):
    write_detections(tmp_path / "det.csv", [detect(("vid0", 902), (0.431, 0.529, 0.637, 0.678), 7, 0.9)])
    files = dict(groundtruth=REFERENCE / "groundtruth.csv", detections=tmp_path / "det.csv",
                 labelmap=REFERENCE / "labelmap.pbtxt", exclusions=REFERENCE / "exclusions.csv")
    assert ava_eval(**files, as_json=True) == 0
    report = json.loads(capsys.readouterr().out)
    assert set(report) == {"mAP", "per_class"}
    assert set(report["per_class"]) == {"bend/bow (at the waist)", "dance", "jump/leap"}
    assert report["per_class"]["bend/bow (at the waist)"] == 0.0 and 0 < report["per_class"]["jump/leap"] < 1
    assert ava_eval(**files) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("mAP@0.5IoU: ") and "  0.00  bend/bow (at the waist)" in printed


def test_ava_eval_json_writes_null_for_classes_without_groundtruth(tmp_path, capsys):
    (tmp_path / "gt.csv").write_text("vid,0902,0.1,0.1,0.3,0.3,1,0\n")
    write_detections(tmp_path / "det.csv", [detect(K1, (0.1, 0.1, 0.3, 0.3), 1, 0.9)])
    ava_eval(groundtruth=tmp_path / "gt.csv", detections=tmp_path / "det.csv",
             labelmap=REFERENCE / "labelmap.pbtxt", as_json=True)
    assert json.loads(capsys.readouterr().out) == {
        "mAP": 1.0, "per_class": {"bend/bow (at the waist)": 1.0, "dance": None, "jump/leap": None}}
