"""Datasets are checked before a run spends time on them: a class without training images, a bad
or mis-sized validation image and a broken validation video stop the run at its start, naming the
file; with data.skip_bad the bad validation files are announced and skipped."""
from __future__ import annotations

import json

import pytest
from PIL import Image

from helpers import make_image_folder
from vislab.config import load_config
from vislab.data.datasets.coco import CocoDetection
from vislab.data.datasets.image_folder import BadImageError, DataError
from vislab.data.datasets.video_list import VideoListDataset
from vislab.data.video.decode import VideoDecodeError
from vislab.engine.run import train
from vislab.engine.trainer import Trainer

FOLDER_RUN = ["model.name=resnet18", "model.width=0.25", "model.norm=GN", "model.norm_groups=4",
              "data.name=image_folder", "data.image_size=32", "data.batch_size=6", "data.num_workers=0",
              "train.epochs=1", "train.log_every=1"]


def test_a_training_class_without_images_is_named(tmp_path):
    root = make_image_folder(tmp_path / "data", per_class={"train": 2, "val": 2})
    (root / "train" / "purple").mkdir()
    with pytest.raises(DataError, match=rf"class folders without images: {root / 'train' / 'purple'}"):
        train(load_config(None, [*FOLDER_RUN, f"data.root={root}", f"output_dir={tmp_path / 'run'}"]))


def test_a_bad_validation_image_stops_the_run_before_training(tmp_path, monkeypatch):
    root = make_image_folder(tmp_path / "data", per_class={"train": 2, "val": 2})
    bad = root / "val" / "green" / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    steps = []
    monkeypatch.setattr(Trainer, "fit", lambda self: steps.append("fit") or {})
    with pytest.raises(BadImageError, match=rf"cannot read image {bad}.*data.skip_bad=true"):
        train(load_config(None, [*FOLDER_RUN, f"data.root={root}", f"output_dir={tmp_path / 'run'}"]))
    assert not steps and not (tmp_path / "run").exists()
    with pytest.warns(UserWarning, match=rf"1 image folder {root / 'val'} files will be skipped.*{bad}"):
        train(load_config(None, [*FOLDER_RUN, f"data.root={root}", "data.skip_bad=true",
                                 f"output_dir={tmp_path / 'run2'}"]))
    assert steps == ["fit"]


def test_a_validation_image_of_another_size_than_its_annotation_is_named(tmp_path):
    (tmp_path / "images").mkdir()
    Image.new("RGB", (30, 20)).save(tmp_path / "images" / "1.png")
    annotations = tmp_path / "val.json"
    annotations.write_text(json.dumps({
        "images": [{"id": 1, "file_name": "1.png", "height": 20, "width": 40}],
        "annotations": [{"id": 3, "image_id": 1, "category_id": 1, "bbox": [1, 1, 5, 5], "iscrowd": 0}],
        "categories": [{"id": 1, "name": "box"}]}))
    dataset = CocoDetection(images_dir=tmp_path / "images", annotations=annotations, train=False, masks=False)
    with pytest.raises(DataError, match=rf"image {tmp_path / 'images' / '1.png'} is 30x20 pixels but "
                                        rf"{annotations} says 40x20"):
        dataset.check_files()


def test_a_broken_validation_video_is_named(tmp_path):
    (tmp_path / "clip.mp4").write_bytes(b"not a video at all")
    (tmp_path / "val.csv").write_text("clip.mp4,0\n")
    dataset = VideoListDataset(list_file=tmp_path / "val.csv", root=tmp_path, train=False, num_frames=4,
                               stride=1, transform=None)
    with pytest.raises(VideoDecodeError, match=rf"cannot open video {tmp_path / 'clip.mp4'}"):
        dataset.check_files()
