"""``vislab export``: a classifier and a video model to ONNX (run by onnxruntime) and to a
torch.export program, each equal to PyTorch's outputs; detectors to a torch.export program."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import vislab
from helpers import tiny_digits_config
from vislab.cli import main
from vislab.engine.run import train
from vislab.export import ExportError, export_weights
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
