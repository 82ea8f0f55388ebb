"""Bad input and edge cases found in review: small few-shot sets, mismatched splits, resuming
under other optimizer settings, best checkpoints between saves, worker errors, re-saves."""
from __future__ import annotations

import shutil

import pytest
import torch
import yaml

from helpers import TINY_DIGITS, make_image_folder, tiny_digits_config
from vislab.cli import main
from vislab.config import load_config, parse_overrides
from vislab.data.datasets.image_folder import DataError
from vislab.data.sampler import TrainSampler
from vislab.engine.checkpoint import CheckpointDir, CheckpointError, load_checkpoint
from vislab.engine.run import train


def test_a_set_smaller_than_the_global_batch_is_repeated_to_fill_it():
    ranks = [TrainSampler(5, batch_size=4, seed=0, rank=r, world_size=2) for r in range(2)]
    batches = [list(s) for s in ranks]
    assert all(len(b) == 4 for b in batches) and ranks[0].batches_per_epoch == 1
    indices = [i for b in batches for i, _ in b]
    assert set(indices) == set(range(5)) and len(indices) == 8


def test_train_and_val_with_different_classes_is_an_error(tmp_path):
    root = make_image_folder(tmp_path / "data", per_class={"train": 2, "val": 2})
    shutil.rmtree(root / "val" / "green")
    cfg = load_config(None, ["data.name=image_folder", f"data.root={root}", "model.width=0.25",
                             "data.num_workers=0", "data.batch_size=2", f"output_dir={tmp_path / 'r'}"])
    with pytest.raises(DataError, match="different class folders: \\['green'\\]"):
        train(cfg)


def test_resume_under_another_optimizer_is_refused(tmp_path):
    out = tmp_path / "run"
    train(tiny_digits_config(out, "train.epochs=1"))
    with pytest.raises(CheckpointError, match="optim.name \\(checkpoint 'adamw', now 'sgd'\\)"):
        train(tiny_digits_config(out, "train.epochs=2", "resume=true", "optim.name=sgd"))


def test_best_weights_are_saved_even_between_regular_checkpoints(tmp_path):
    out = tmp_path / "run"
    summary = train(tiny_digits_config(out, "train.epochs=3", "train.checkpoint_every=10"))
    best_epoch = summary["best"]["epoch"]
    best = CheckpointDir(out / "checkpoints").pointer("best")
    assert best is not None and best.name == f"epoch_{best_epoch:04d}"
    assert load_checkpoint(best).state["epoch"] == best_epoch


def test_re_saving_a_checkpoint_replaces_it_whole(tmp_path):
    folder = CheckpointDir(tmp_path)
    for value in (1.0, 2.0):
        folder.save("epoch_0001", model_state={"w": torch.full((2,), value)}, metadata={},
                    trainer_state={"step": int(value)})
    assert load_checkpoint(tmp_path / "epoch_0001").model["w"].tolist() == [2.0, 2.0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epoch_0001", "last"]


def test_unreadable_image_in_a_worker_is_one_line_naming_the_file(tmp_path, capsys):
    root = make_image_folder(tmp_path / "data", per_class={"train": 2, "val": 1})
    (root / "train" / "red" / "broken.jpg").write_bytes(b"not a jpeg")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(parse_overrides(TINY_DIGITS)))
    code = main(["train", str(recipe), "data.name=image_folder", f"data.root={root}", "data.num_workers=1",
                 "data.batch_size=7", "data.max_train_samples=null", "data.max_val_samples=null",
                 f"output_dir={tmp_path / 'run'}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and "broken.jpg" in err[0] and "Traceback" not in err[0]


def test_unknown_device_is_a_clear_error(tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(parse_overrides(TINY_DIGITS)))
    assert main(["train", str(recipe), "train.device=gpu0", f"output_dir={tmp_path / 'run'}"]) == 1
    assert "train.device='gpu0' is not a device" in capsys.readouterr().err
