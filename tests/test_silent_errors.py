"""No silently wrong results: weights trained on other classes are refused, non-finite outputs
stop evaluation and prediction, eval.json is written atomically or its failure said."""
from __future__ import annotations

import json
import math

import pytest
import torch
import yaml
from PIL import Image

from helpers import TINY_DIGITS, deny_writes, make_image_folder, tiny_digits_config
from vislab.cli import main
from vislab.config import parse_overrides
from vislab.engine.checkpoint import BEST, LAST
from vislab.engine.run import train
from vislab.engine.trainer import Trainer
from vislab.tasks.initial_weights import check_classes
from vislab.utils.finite import NonFiniteOutputError, check_finite
from vislab.weights import WeightsError, read_weights, save_weights

FOLDER_RUN = ["model.name=resnet18", "model.width=0.25", "model.norm=GN", "model.norm_groups=4",
              "data.name=image_folder", "data.image_size=32", "data.batch_size=6", "data.num_workers=0",
              "train.epochs=1", "train.log_every=1"]


def test_eval_refuses_weights_trained_on_other_classes(tmp_path, capsys):
    trained_on = make_image_folder(tmp_path / "colours", per_class={"train": 2, "val": 2})
    recipe = tmp_path / "folder.yaml"
    recipe.write_text(yaml.safe_dump(parse_overrides(FOLDER_RUN)))
    assert main(["train", str(recipe), f"data.root={trained_on}", f"output_dir={tmp_path / 'run'}"]) == 0
    renamed = make_image_folder(tmp_path / "other", per_class={"train": 2, "val": 2})
    (renamed / "val" / "red").rename(renamed / "val" / "yellow")
    (renamed / "train" / "red").rename(renamed / "train" / "yellow")
    capsys.readouterr()
    assert main(["eval", str(recipe), f"data.root={renamed}", f"weights={tmp_path / 'run'}"]) == 1
    err = capsys.readouterr().err
    assert "trained on other classes" in err and "only in the weights: ['red']" in err
    assert "only in the data: ['yellow']" in err


def test_classes_in_another_order_are_named():
    with pytest.raises(WeightsError, match=r"another order: 'b' \(0 in the weights, 1 in the data\)"):
        check_classes(saved=["b", "a"], data=["a", "b"], source="w.safetensors")
    check_classes(saved=None, data=["a", "b"], source="converted weights record no classes")


def test_non_finite_evaluation_stops_and_is_never_the_last_or_best(tmp_path, monkeypatch):
    out = tmp_path / "run"
    evaluate = Trainer.run_evaluation

    def poisoned_at_epoch_two(trainer):
        if trainer.epoch == 2:  # the weights go bad after a finite training loss
            with torch.no_grad():
                next(trainer.model_without_ddp.parameters()).fill_(math.nan)
        return evaluate(trainer)

    monkeypatch.setattr(Trainer, "run_evaluation", poisoned_at_epoch_two)
    with pytest.raises(NonFiniteOutputError, match=r"evaluation after epoch 2.*not finite.*epoch_0001"):
        train(tiny_digits_config(out, "train.epochs=3"))
    assert (out / "checkpoints" / LAST).read_text() == "epoch_0001"
    assert (out / "checkpoints" / BEST).read_text() == "epoch_0001"
    assert not (out / "checkpoints" / "epoch_0002").exists()
    assert all(math.isfinite(v) for line in (out / "metrics.jsonl").read_text().splitlines()
               for v in json.loads(line).values())


def test_predict_with_broken_weights_exits_non_zero(tmp_path, capsys):
    out = tmp_path / "run"
    train(tiny_digits_config(out, "train.epochs=1"))
    weights = out / "checkpoints" / "epoch_0001" / "model.safetensors"
    state, metadata = read_weights(weights)
    state = {k: v.fill_(math.nan) if k.startswith("head.") else v for k, v in state.items()}
    save_weights(state, weights, metadata=metadata)
    image = tmp_path / "digit.png"
    Image.new("RGB", (32, 32), (90, 90, 90)).save(image)
    assert main(["predict", "--weights", str(out), str(image)]) == 1
    captured = capsys.readouterr()
    assert "nan%" not in captured.out
    assert f"the model's output for {image} is not finite" in captured.err and "broken" in captured.err


def test_eval_prints_metrics_it_cannot_save(tmp_path, capsys, monkeypatch):
    """Beneath a file, and in a folder without write permission: the metrics are printed, the
    error names the file they could not be saved to, and nothing is left in the folder."""
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(yaml.safe_dump(parse_overrides(TINY_DIGITS)))
    train(tiny_digits_config(tmp_path / "run", "train.epochs=1"))
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    read_only = tmp_path / "read_only"
    read_only.mkdir()
    deny_writes(read_only, monkeypatch)
    for out in (a_file / "eval.json", read_only / "eval.json"):
        capsys.readouterr()
        assert main(["eval", str(recipe), f"weights={tmp_path / 'run'}", "--out", str(out)]) == 1
        captured = capsys.readouterr()
        assert "val/top1" in captured.out
        assert f"the metrics above could not be saved to {out}: " in captured.err
    assert captured.err.rstrip().endswith("Permission denied")
    assert not list(read_only.iterdir())


def test_check_finite_names_the_tensor():
    check_finite([{"boxes": torch.zeros(2, 4), "labels": torch.tensor([1, 2])}], what="ok")
    with pytest.raises(NonFiniteOutputError, match=r"detections is not finite \(1 of 8 values of "
                                                   r"output\[0\]\['boxes'\]"):
        check_finite([{"boxes": torch.tensor([[0.0, 1, 2, math.inf], [0, 1, 2, 3]])}], what="detections")
