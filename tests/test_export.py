"""``vislab export``: a classifier and a video model to ONNX (run by onnxruntime) and to a
torch.export program, each equal to PyTorch's outputs; detectors (FCOS, Mask R-CNN) to a
torch.export program; action detectors refused."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import vislab
from helpers import tiny_digits_config
from vislab.cli import main
from vislab.engine.run import train
from vislab.export import ExportError, export_weights
from vislab.models.detection.postprocess import paste_masks
from vislab.predict import load_trained_model
from vislab.weights import save_weights

onnxruntime = pytest.importorskip("onnxruntime", reason="the optional export extra (make test installs it)")


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "run"
    train(tiny_digits_config(out, "train.epochs=1"))
    return out


def test_classifier_to_onnx_runs_in_onnxruntime_with_any_batch(digits_run, tmp_path, capsys):
    out = tmp_path / "digits.onnx"
    assert main(["export", str(digits_run), "--format", "onnx", "--out", str(out), "--input", "3x32x32"]) == 0
    assert "outputs equal PyTorch's within" in capsys.readouterr().out
    model = vislab.create_model("resnet18", num_classes=10, width=0.25, norm="GN", norm_groups=4)
    vislab.load_weights(model, digits_run / "checkpoints" / "epoch_0001" / "model.safetensors")
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(5))  # another batch size than exported
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    (logits,) = session.run(None, {"images": x.numpy()})
    with torch.no_grad():
        expected = model.eval()(x).numpy()
    assert logits.shape == (3, 10) and np.abs(logits - expected).max() <= 1e-4


def test_classifier_to_torch_export(digits_run, tmp_path):
    report = export_weights(digits_run, fmt="torch-export", out=tmp_path / "digits.pt2")
    assert report.input_shape == (3, 32, 32) and report.max_abs_diff <= 1e-5
    program = torch.export.load(tmp_path / "digits.pt2")
    assert program.module()(torch.zeros(1, 3, 32, 32)).shape == (1, 10)


def test_video_model_to_onnx(tmp_path):
    weights = tmp_path / "slowfast.safetensors"
    save_weights(vislab.create_model("slowfast_small", num_classes=4).state_dict(), weights,
                 metadata={"model": "slowfast_small", "num_classes": 4})
    report = export_weights(weights, fmt="onnx", out=tmp_path / "slowfast.onnx", input_shape=(3, 16, 32, 32))
    assert report.max_abs_diff <= 1e-4 and (tmp_path / "slowfast.onnx").stat().st_size > 100_000


VIDEO_MODELS = {"slowfast_small": ({}, (3, 16, 32, 32)),
                "mvitv2_s_16x4": ({"depths": [1, 1, 2, 1], "embed_dim": 16, "num_frames": 4, "img_size": 64},
                                  (3, 4, 64, 64))}


@pytest.mark.parametrize("name", sorted(VIDEO_MODELS))
def test_video_model_to_torch_export(tmp_path, name):
    """A 3-D CNN and a video transformer: the loaded program's logits on another clip than the
    one it was exported with equal the model's within 1e-4."""
    options, shape = VIDEO_MODELS[name]
    weights = tmp_path / f"{name}.safetensors"
    torch.manual_seed(0)
    save_weights(vislab.create_model(name, num_classes=4, **options).state_dict(), weights,
                 metadata={"model": name, "num_classes": 4, "options": options})
    report = export_weights(weights, fmt="torch-export", out=tmp_path / f"{name}.pt2", input_shape=shape)
    assert report.input_shape == shape and report.max_abs_diff <= 1e-4
    clip = torch.randn(1, *shape, generator=torch.Generator().manual_seed(3))
    model, _, _ = load_trained_model(weights)
    with torch.no_grad():
        expected, logits = model(clip), torch.export.load(tmp_path / f"{name}.pt2").module()(clip)
    assert logits.shape == (1, 4) and expected.std() > 0  # random weights, a non-trivial output
    assert (logits - expected).abs().max().item() <= 1e-4


@pytest.mark.parametrize("score_threshold, found", [(0.05, "several"), (0.9, "none")])
def test_mask_rcnn_to_torch_export_gives_the_same_boxes_and_masks(tmp_path, score_threshold, found):
    """Random weights score every class about 0.25: the 0.05 threshold keeps the 100 detections an
    image may have, 0.9 none. On another image than the one it was exported with, the program's
    boxes, scores, labels and mask probabilities equal the model's, and so do the pasted masks."""
    weights = tmp_path / "mask_rcnn.safetensors"
    torch.manual_seed(0)
    save_weights(vislab.create_model("mask_rcnn_r18_fpn_gn_small", num_classes=3).state_dict(), weights,
                 metadata={"model": "mask_rcnn_r18_fpn_gn_small", "num_classes": 3,
                           "options": {"score_threshold": score_threshold}})
    report = export_weights(weights, fmt="torch-export", out=tmp_path / "mask_rcnn.pt2", input_shape=(3, 96, 128))
    assert report.max_abs_diff <= 1e-4
    image, sizes = torch.randn(1, 3, 96, 128, generator=torch.Generator().manual_seed(1)), [(96, 128)]
    model, _, _ = load_trained_model(weights)
    with torch.no_grad():
        expected = model(image, sizes)[0]
        detections = torch.export.load(tmp_path / "mask_rcnn.pt2").module()(image, sizes)[0]
    assert set(detections) == {"boxes", "scores", "labels", "mask_probs"}
    assert len(detections["boxes"]) == (100 if found == "several" else 0)
    assert torch.equal(detections["labels"], expected["labels"])
    for key in ("boxes", "scores", "mask_probs"):
        torch.testing.assert_close(detections[key], expected[key], atol=1e-4, rtol=0)
    masks = [paste_masks(d["mask_probs"], d["boxes"], image_size=sizes[0]) for d in (detections, expected)]
    assert torch.equal(*masks)


def test_action_detector_export_is_refused(tmp_path):
    weights = tmp_path / "ava.safetensors"
    save_weights(vislab.create_model("ava_slowfast_small", num_classes=3).state_dict(), weights,
                 metadata={"model": "ava_slowfast_small", "num_classes": 3})
    with pytest.raises(ExportError, match="ava_slowfast_small is an action detector, which takes clips and boxes"):
        export_weights(weights, fmt="torch-export", out=tmp_path / "ava.pt2")
    assert not (tmp_path / "ava.pt2").exists()


@pytest.mark.parametrize("score_threshold, found", [(0.05, "several"), (0.2, "none")])
def test_detector_to_torch_export_and_not_onnx(tmp_path, score_threshold, found):
    """Random weights score about 0.07: the 0.05 threshold keeps many detections, the default 0.2
    none (an exported detector must run on an image without detections too)."""
    weights = tmp_path / "fcos.safetensors"
    torch.manual_seed(0)
    save_weights(vislab.create_model("fcos_r18_fpn_gn_small", num_classes=3).state_dict(), weights,
                 metadata={"model": "fcos_r18_fpn_gn_small", "num_classes": 3,
                           "options": {"score_threshold": score_threshold}})
    with pytest.raises(ExportError, match="detector: export it with --format torch-export"):
        export_weights(weights, fmt="onnx", out=tmp_path / "fcos.onnx")
    report = export_weights(weights, fmt="torch-export", out=tmp_path / "fcos.pt2", input_shape=(3, 96, 128))
    assert report.max_abs_diff <= 1e-4
    program = torch.export.load(tmp_path / "fcos.pt2").module()
    detections = program(torch.randn(1, 3, 96, 128, generator=torch.Generator().manual_seed(1)), [(96, 128)])[0]
    assert set(detections) == {"boxes", "scores", "labels"}
    assert (len(detections["boxes"]) >= 2) if found == "several" else (len(detections["boxes"]) == 0)


def test_bad_input_shape_is_named(digits_run, tmp_path, capsys):
    assert main(["export", str(digits_run), "--format", "onnx", "--out", str(tmp_path / "x.onnx"),
                 "--input", "3x16x32x32"]) == 1
    assert "--input 3x16x32x32 does not fit a classification model: give 3xHxW" in capsys.readouterr().err
