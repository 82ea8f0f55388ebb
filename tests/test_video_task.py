"""Video classification end to end on a tiny generated moving-shapes set: training, multi-view
evaluation with the confusion matrix, `vislab predict` on a clip, and the single-frame control."""
from __future__ import annotations

import json

import pytest

from helpers import tensorboard_images
from vislab.cli import main
from vislab.config import load_config
from vislab.engine.run import train

TINY_VIDEO = [
    "task=video", "model.name=slowfast_small", "data.name=moving_shapes", "data.synthetic_train=8",
    "data.synthetic_val=4", "data.num_frames=8", "data.frame_stride=3", "data.image_size=32",
    "data.short_side_range=[32,40]", "data.test_short_side=36", "data.test_clips=2", "data.test_crops=3",
    "data.hflip=false", "data.batch_size=4", "data.num_workers=0", "optim.base_lr=null", "optim.lr=0.05",
    "train.epochs=1", "train.log_every=1",
]


@pytest.fixture(scope="module")
def video_run(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("video")
    overrides = [*TINY_VIDEO, f"data.root={tmp_path / 'clips'}"]
    summary = train(load_config(None, [*overrides, f"output_dir={tmp_path / 'run'}"]))
    return tmp_path, overrides, summary


def test_training_reports_video_and_clip_accuracy(video_run):
    tmp_path, _, summary = video_run
    final = summary["final"]
    assert {"val/top1", "val/top5", "val/clip_top1"} <= set(final)
    assert all(0.0 <= final[k] <= 1.0 for k in ("val/top1", "val/top5", "val/clip_top1"))
    assert final["val/top5"] >= final["val/top1"]
    assert (tmp_path / "run" / "val" / "confusion_matrix.png").stat().st_size > 0
    assert "val/confusion_matrix" in tensorboard_images(tmp_path / "run")


def test_eval_and_predict_commands(video_run, capsys):
    tmp_path, overrides, summary = video_run
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("task: video\n")
    out = tmp_path / "eval.json"
    assert main(["eval", str(recipe), *overrides, f"weights={summary['last_checkpoint']}", "--out", str(out)]) == 0
    assert "val/top1" in json.loads(out.read_text())
    clip = next((tmp_path / "clips" / "videos").glob("val_*.mp4"))
    capsys.readouterr()
    assert main(["predict", "--weights", summary["last_checkpoint"], str(clip), "--topk", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"{clip} (6 views: 2 clips x 3 crops)"
    assert len(lines) == 4


def test_single_frame_clips_repeat_one_frame(video_run):
    from vislab.tasks.video import video_dataset

    tmp_path, overrides, _ = video_run
    cfg = load_config(None, [*overrides, "data.frame_stride=0"])
    clip, _ = video_dataset(cfg, "train")[0]
    assert clip.shape == (3, 8, 32, 32)
    assert (clip == clip[:, :1]).all()  # every frame equals the first: no motion to see
