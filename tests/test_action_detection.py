"""The action-detection task end to end on a tiny generated moving-actors set: its samples (from
JPEG frames or mp4), training and frame mAP, eval, ava-eval and predict through the CLI."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from vislab.cli import main
from vislab.config import load_config
from vislab.data.datasets.ava_files import read_annotations, read_label_map
from vislab.data.datasets.image_folder import DataError
from vislab.data.video.decode import video_frame_count
from vislab.engine.run import train
from vislab.tasks.action_detection import ActionDetectionTask

RECIPE = Path(__file__).resolve().parents[1] / "configs" / "ava" / "moving_actors_slowfast.yaml"
TINY = ["data.synthetic_train=4", "data.synthetic_val=3", "data.batch_size=4", "data.num_workers=0",
        "data.num_frames=8", "data.frame_stride=2", "data.image_size=64", "data.short_side_range=[64,72]",
        "data.test_short_side=64", "model.width=0.25", "schedule.warmup_epochs=0", "train.log_every=1"]


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("actors") / "set"


def _config(root: Path, *overrides: str):
    return load_config(RECIPE, [*TINY, f"data.root={root}", *overrides])


def test_samples_from_frames_and_from_mp4_agree(root):
    from_frames = ActionDetectionTask(_config(root)).val_set
    from_videos = ActionDetectionTask(_config(root, "data.videos=videos")).val_set
    assert len(from_frames) == len(from_videos) > 0
    torch.manual_seed(0)
    clip, target = from_frames[0]
    torch.manual_seed(0)
    clip_mp4, target_mp4 = from_videos[0]
    assert clip.shape == clip_mp4.shape == (3, 8, 64, 64)
    assert torch.equal(target["boxes"], target_mp4["boxes"]) and target["keyframe"] == target_mp4["keyframe"]
    # JPEG and H.264 compress the same frames differently: close, and far closer than another keyframe's clip
    torch.manual_seed(0)
    other, _ = from_frames[len(from_frames) - 1]
    assert (clip - clip_mp4).abs().mean() < min(0.2, (clip - other).abs().mean() / 3)


def test_training_boxes_carry_actions_and_proposals_join_them(root):
    plain = ActionDetectionTask(_config(root, "data.train_proposal_iou=null")).train_set
    joined = ActionDetectionTask(_config(root)).train_set  # the recipe adds proposals with IoU > 0.9
    key = plain.keyframes[0]
    assert len(joined.boxes[key]) >= len(plain.boxes[key])
    assert sum(map(len, joined.boxes.values())) > sum(map(len, plain.boxes.values()))
    _, target = plain[0]
    assert target["labels"].shape == (len(plain.boxes[key]), 6) and (target["labels"].sum(dim=1) >= 1).all()


def test_evaluation_boxes_are_proposals_above_the_threshold_or_the_ground_truth(root):
    proposals = ActionDetectionTask(_config(root)).val_set
    truth = ActionDetectionTask(_config(root, "data.val_boxes=groundtruth")).val_set
    annotated = read_annotations(truth.label_map.path.parent / "val.csv", label_map=truth.label_map)
    assert set(truth.keyframes) <= set(annotated) and all(not actions for _, actions in truth.boxes[truth.keyframes[0]])
    assert all(len(boxes) > 0 for boxes in proposals.boxes.values())


def test_a_video_missing_from_the_frame_list_names_the_annotations(root, tmp_path):
    ActionDetectionTask(_config(root)).val_set  # generated
    copy = tmp_path / "set"
    shutil.copytree(root, copy)
    frame_list = copy / "frame_lists" / "val.csv"
    header, *rows = frame_list.read_text().splitlines()
    kept = [row for row in rows if not row.startswith(rows[0].split()[0] + " ")]
    frame_list.write_text("\n".join([header, *kept]) + "\n")
    with pytest.raises(DataError, match=r"val\.csv annotates 1 video\(s\) that frame list .* does not have"):
        ActionDetectionTask(_config(copy)).val_set


def test_train_eval_ava_eval_and_predict_through_the_cli(root, tmp_path, capsys):
    run = tmp_path / "run"
    summary = train(_config(root, "train.steps=2", f"output_dir={run}"))
    assert summary["steps"] == 2 and 0.0 <= summary["final"]["val/mAP"] <= 1.0
    detections = next(run.rglob("detections.csv"))
    assert next(run.rglob("per_class_ap.md")).read_text().count("|") > 10

    assert main(["eval", str(RECIPE), *TINY, f"data.root={root}", f"weights={run}"]) == 0
    assert "val/mAP" in capsys.readouterr().out

    annotations = root / "annotations"
    assert main(["ava-eval", "--groundtruth", str(annotations / "val.csv"), "--detections", str(detections),
                 "--labelmap", str(annotations / "action_list.pbtxt"), "--exclusions",
                 str(annotations / "val_excluded_timestamps.csv"), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert set(printed["per_class"]) == set(read_label_map(annotations / "action_list.pbtxt").names.values())
    assert printed["mAP"] == pytest.approx(summary["final"]["val/mAP"], abs=1e-3)  # scores written to 6 decimals

    video = root / "videos" / "val_000000.mp4"
    out = tmp_path / "drawn.mp4"
    assert main(["predict", "--weights", str(run), str(video), "--boxes", str(annotations / "val_proposals.csv"),
                 "--out", str(out)]) == 0
    assert video_frame_count(out) == video_frame_count(video)
    records = json.loads(out.with_suffix(".json").read_text())["actions"]
    assert records and {r["second"] for r in records} <= {901, 902, 903} and len(records[0]["actions"]) == 6


def test_proposal_boxes_without_a_proposals_file_name_the_key(root):
    from vislab.config import ConfigError

    with pytest.raises(ConfigError, match=r"data\.val_proposals is not set"):
        ActionDetectionTask(_config(root, "data.val_proposals=null")).val_set
    assert len(ActionDetectionTask(_config(root, "data.val_proposals=null", "data.val_boxes=groundtruth")).val_set)
