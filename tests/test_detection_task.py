"""Detection end to end on a tiny generated shapes set: training, COCO evaluation, the CLI's
eval / predict / convert, and pretrained backbones."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from helpers import tensorboard_images
from vislab.cli import main
from vislab.config import load_config
from vislab.data.datasets.shapes import SHAPE_KINDS
from vislab.engine.run import train
from vislab.weights import read_weights, save_weights

TINY_SHAPES = [
    "task=detection", "model.name=mask_rcnn_r18_fpn_gn_small", "model.backbone_options={width: 0.25, norm_groups: 8}",
    "data.name=shapes", "data.synthetic_train=6", "data.synthetic_val=3", "data.min_sizes=[96]", "data.max_size=160",
    "data.test_min_size=96", "data.batch_size=2", "data.num_workers=0", "optim.lr=0.01", "train.steps=4",
    "train.epochs=2", "train.log_every=2", "schedule.name=constant",
]


def tiny_shapes_config(tmp_path: Path, *overrides: str):
    return load_config(None, [*TINY_SHAPES, f"data.root={tmp_path / 'shapes'}", f"output_dir={tmp_path / 'run'}",
                              *overrides])


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("detection")
    summary = train(tiny_shapes_config(tmp_path))
    return tmp_path, summary


def test_training_writes_coco_metrics_and_tables(trained_run):
    tmp_path, summary = trained_run
    final = summary["final"]
    for iou_type in ("bbox", "segm"):
        for metric in ("AP", "AP50", "AP75"):
            assert 0.0 <= final[f"val/{iou_type}/{metric}"] <= 1.0
    run = tmp_path / "run"
    assert (run / "val" / "per_category_ap.md").read_text().startswith("| category")
    results = json.loads((run / "val" / "coco_results_bbox.json").read_text())
    assert all({"image_id", "category_id", "bbox", "score"} <= set(r) for r in results)
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert any("loss" in r for r in records)
    _, metadata = read_weights(Path(summary["last_checkpoint"]) / "model.safetensors")
    assert metadata["classes"] == list(SHAPE_KINDS)
    # detections drawn on the first validation images, in TensorBoard at every evaluation
    drawn = sorted(p.name for p in (run / "val").glob("detections_*.png"))
    assert drawn == [f"detections_{i}.png" for i in range(3)]  # every one of the 3 validation images (at most 4)
    images = tensorboard_images(run)
    assert {f"val/detections_{i}" for i in range(len(drawn))} <= set(images)
    assert len(images["val/detections_0"]) == len([r for r in records if "val/bbox/AP" in r])


def test_eval_and_predict_commands(trained_run, capsys):
    tmp_path, summary = trained_run
    weights = summary["last_checkpoint"]
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("task: detection\n")
    overrides = [*TINY_SHAPES, f"data.root={tmp_path / 'shapes'}", f"weights={weights}"]
    out = tmp_path / "eval" / "metrics.json"
    assert main(["eval", str(recipe), *overrides, "--out", str(out)]) == 0
    record = json.loads(out.read_text())
    assert "val/segm/AP" in record
    assert (out.parent / "metrics" / "per_category_ap.md").is_file()
    image = next((tmp_path / "shapes" / "val").glob("*.jpg"))
    drawn = tmp_path / "pred" / "drawn.png"
    assert main(["predict", "--weights", str(weights), str(image), "--out", str(drawn),
                 "--score-threshold", "0.0"]) == 0
    detections = json.loads(drawn.with_suffix(".json").read_text())
    assert detections["image"] == str(image) and isinstance(detections["detections"], list)
    from PIL import Image
    assert Image.open(drawn).size == Image.open(image).size


def test_a_classification_checkpoint_initialises_the_detector_backbone(trained_run, tmp_path):
    from vislab.models import create_model
    from vislab.tasks import build_task

    classifier = create_model("resnet18", num_classes=10, width=0.25, norm="GN", norm_groups=8)
    save_weights(classifier.state_dict(), tmp_path / "classifier.safetensors", metadata={"model": "resnet18"})
    shapes_root = trained_run[0] / "shapes"
    cfg = load_config(None, [*TINY_SHAPES, f"data.root={shapes_root}",
                             f"pretrained={tmp_path / 'classifier.safetensors'}"])
    detector = build_task(cfg).build_model()
    assert torch.equal(detector.backbone.res3[0].conv1.weight, classifier.backbone.res3[0].conv1.weight)
    other = create_model("resnet18", num_classes=10, width=0.5)
    save_weights(other.state_dict(), tmp_path / "other.safetensors", metadata={"model": "resnet18"})
    cfg.pretrained = str(tmp_path / "other.safetensors")
    with pytest.raises(Exception, match="do not fit the backbone"):
        build_task(cfg).build_model()


def test_torchvision_detector_converts_with_its_numerics(tmp_path):
    from torchvision.models.detection import maskrcnn_resnet50_fpn

    from vislab.convert import convert_file

    torch.save(maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=91).state_dict(),
               tmp_path / "tv.pth")
    message = convert_file(source="torchvision", model_name="mask_rcnn_r50_fpn", src=tmp_path / "tv.pth",
                           dst=tmp_path / "converted.safetensors")
    assert "90 classes" in message
    _, metadata = read_weights(tmp_path / "converted.safetensors")
    assert metadata["options"] == {"round_anchors": True, "roi_aligned": False, "roi_sampling_ratio": 2}
    assert metadata["num_classes"] == 90


def test_max_train_samples_trains_on_a_nested_fraction_of_the_set(trained_run):
    from vislab.engine.distributed import DistInfo
    from vislab.tasks import build_task

    shapes_root = trained_run[0] / "shapes"
    sizes = {}
    for count in (3, 5):
        cfg = load_config(None, [*TINY_SHAPES, f"data.root={shapes_root}", f"data.max_train_samples={count}"])
        loader, _ = build_task(cfg).build_train_loader(DistInfo(rank=0, world_size=1, local_rank=0))
        sizes[count] = set(loader.dataset.dataset.indices)  # SeededSamples over the subset
    assert len(sizes[3]) == 3 and len(sizes[5]) == 5 and sizes[3] < sizes[5]
