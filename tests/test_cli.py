"""The `vislab` command: every sub-command, its --help, and one-line errors for bad input."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torchvision
import yaml
from PIL import Image

from helpers import TINY_DIGITS
from vislab.cli import COMMANDS, main
from vislab.config import parse_overrides
from vislab.data.datasets.digits import DigitsDataset

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """A tiny digits run trained through the CLI, shared by the eval and predict tests."""
    root = tmp_path_factory.mktemp("cli")
    recipe = root / "tiny.yaml"
    recipe.write_text(yaml.safe_dump(parse_overrides(TINY_DIGITS)))
    assert main(["train", str(recipe), f"output_dir={root / 'run'}", "train.epochs=1"]) == 0
    return recipe, root / "run"


def test_console_script_is_installed():
    exe = Path(sys.executable).parent / "vislab"
    result = subprocess.run([str(exe), "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and all(command in result.stdout for command in COMMANDS)


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_command_has_help_with_an_example(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "example:" in out and f"vislab {command}" in out.split("example:")[1]


def test_train_prints_summary_line(trained_run, capsys):
    recipe, run = trained_run
    assert main(["train", str(recipe), f"output_dir={run.parent / 'again'}", "train.epochs=1"]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith("tiny: val top1") and "1 epochs" in line and str(run.parent / "again") in line


def test_eval_prints_and_writes_metrics(trained_run, capsys):
    recipe, run = trained_run
    assert main(["eval", str(recipe), f"weights={run}"]) == 0
    out = capsys.readouterr().out
    written = json.loads((run / "checkpoints" / "epoch_0001" / "eval.json").read_text())
    assert f"val/top1 {written['val/top1']:.4f}" in out and "val/top5" in written
    summary = json.loads((run / "summary.json").read_text())
    assert written["val/top1"] == pytest.approx(summary["final"]["val/top1"])


def test_eval_without_weights_is_an_error(trained_run, capsys):
    recipe, _ = trained_run
    assert main(["eval", str(recipe)]) == 1
    assert "weights=PATH" in capsys.readouterr().err


def test_predict_top5_per_image(trained_run, tmp_path, capsys):
    _, run = trained_run
    paths = []
    for i in range(2):
        image, label = DigitsDataset("val")[i]
        paths.append(tmp_path / f"digit{i}_{label}.png")
        image.save(paths[-1])
    assert main(["predict", "--weights", str(run), *map(str, paths)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == str(paths[0]) and len(out) == 2 * 6
    probs = [float(line.split("%")[0]) for line in out[1:6]]
    assert probs == sorted(probs, reverse=True) and sum(probs) <= 100.01


def test_models_json_and_table(capsys):
    assert main(["models", "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    by_name = {r["name"]: r for r in rows}
    assert by_name["resnet50"]["params"] == 25_557_032 and by_name["resnet50"]["reference"]["gmacs"] == 4.089
    assert set(rows[0]) >= {"name", "task", "params", "gmacs", "input", "reference"}
    assert main(["models"]) == 0
    assert "resnext101_32x8d" in capsys.readouterr().out


def test_flops_with_input_and_model_options(capsys):
    assert main(["flops", "resnet50"]) == 0
    assert "25,557,032 params, 4.089 GMACs at 3x224x224" in capsys.readouterr().out
    assert main(["flops", "resnet18", "--input", "3x112x112", "small_stem=true"]) == 0
    assert "at 3x112x112" in capsys.readouterr().out
    assert main(["flops", "resnet18", "widht=0.5"]) == 1
    assert "did you mean width" in capsys.readouterr().err


def test_convert_torchvision_then_predict(tmp_path, capsys):
    torch.manual_seed(0)
    reference = torchvision.models.resnet18(num_classes=7).eval()
    src, dst = tmp_path / "tv.pth", tmp_path / "r18.safetensors"
    torch.save(reference.state_dict(), src)
    assert main(["convert", "--from", "torchvision", "--model", "resnet18", str(src), str(dst)]) == 0
    assert "7 classes" in capsys.readouterr().out
    image = tmp_path / "x.png"
    Image.new("RGB", (64, 48), (120, 30, 200)).save(image)
    assert main(["predict", "--weights", str(dst), str(image), "--topk", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 4
    assert main(["convert", "--from", "torchvision", "--model", "resnet50", str(src), str(tmp_path / "x")]) == 1
    assert "missing" in capsys.readouterr().err


def test_bad_config_key_is_one_line_error(trained_run, capsys):
    recipe, run = trained_run
    assert main(["train", str(recipe), "optim.lrr=0.1"]) == 1
    err = capsys.readouterr().err
    assert "unknown config key 'optim.lrr'" in err and "optim.lr" in err and "Traceback" not in err
    assert main(["train", str(REPO / "configs" / "nope.yaml")]) == 1
    assert "nope.yaml does not exist" in capsys.readouterr().err


def test_model_zoo_page_is_current():
    from vislab.models.zoo_page import render_zoo_page

    page = (REPO / "docs" / "model-zoo.md").read_text()
    assert render_zoo_page() == page, "docs/model-zoo.md is stale: vislab models --markdown > docs/model-zoo.md"
