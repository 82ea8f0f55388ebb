"""Run folders never lose data: resume from the newest checkpoint that loads, fresh runs refuse
folders holding a run and get their own folder, failed starts leave nothing behind."""
from __future__ import annotations

import errno
import os
import re
import stat
import time
from pathlib import Path

import pytest

from helpers import deny_writes, tiny_digits_config
from vislab.config import load_config
from vislab.data.datasets.image_folder import DataError
from vislab.engine import run as run_module
from vislab.engine import checkpoint as checkpoint_module
from vislab.engine.checkpoint import CheckpointError, load_checkpoint
from vislab.engine.run import RunDirError, prepare_run_dir, train
from vislab.weights import save_weights


def test_resume_falls_back_past_a_broken_newest_checkpoint(tmp_path):
    out = tmp_path / "run"
    train(tiny_digits_config(out, "train.epochs=2", "train.keep_last=2"))
    newest = out / "checkpoints" / "epoch_0002"
    (newest / "state.pt").write_bytes((newest / "state.pt").read_bytes()[:100])  # a kill mid-write
    with pytest.warns(UserWarning, match=r"epoch_0001.*passed over.*epoch_0002.*corrupt or truncated"):
        summary = train(tiny_digits_config(out, "train.epochs=2", "train.keep_last=2", "resume=true"))
    assert summary["epochs"] == 2 and summary["steps"] == 12  # epoch 2 trained again from epoch 1
    assert load_checkpoint(out).state["step"] == 12


def test_resume_falls_back_when_the_last_checkpoint_is_missing(tmp_path):
    out = tmp_path / "run"
    train(tiny_digits_config(out, "train.epochs=2", "train.keep_last=2"))
    for file in (out / "checkpoints" / "epoch_0002").iterdir():
        file.unlink()
    (out / "checkpoints" / "epoch_0002").rmdir()
    with pytest.warns(UserWarning, match=r"names 'epoch_0002', which is missing"):
        summary = train(tiny_digits_config(out, "train.epochs=3", "train.keep_last=2", "resume=true"))
    assert summary["steps"] == 18


def test_fresh_run_refuses_a_folder_with_an_earlier_runs_files(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "metrics.jsonl").write_text('{"step": 1, "loss": 2.0}\n')
    with pytest.raises(RunDirError, match=rf"{out} already holds a run \(metrics.jsonl\).*resume=true.*output_dir"):
        train(tiny_digits_config(out))
    assert (out / "metrics.jsonl").read_text() == '{"step": 1, "loss": 2.0}\n'  # untouched


def test_runs_started_in_the_same_second_get_their_own_folders(tmp_path, monkeypatch):
    monkeypatch.setattr(run_module, "RUNS_ROOT", tmp_path / "runs")
    monkeypatch.setattr(time, "strftime", lambda _: "20261202-010203")
    cfg = load_config(None, ["recipe=demo"])
    folders = [prepare_run_dir(cfg)[0] for _ in range(3)]
    assert [f.name for f in folders] == ["20261202-010203", "20261202-010203-1", "20261202-010203-2"]
    assert all(f.is_dir() for f in folders)


def test_a_run_that_fails_before_its_first_step_leaves_no_folder(tmp_path, monkeypatch):
    monkeypatch.setattr(run_module, "RUNS_ROOT", tmp_path / "runs")
    missing = tmp_path / "no_such_data"
    args = ["recipe=demo", "model.name=resnet18", "data.name=image_folder", f"data.root={missing}"]
    with pytest.raises(DataError):
        train(load_config(None, args))
    assert not list((tmp_path / "runs" / "demo").iterdir())
    with pytest.raises(DataError):
        train(load_config(None, [*args, f"output_dir={tmp_path / 'named'}"]))
    assert not (tmp_path / "named").exists()
    kept = tmp_path / "kept"
    kept.mkdir()
    (kept / "notes.txt").write_text("mine")
    with pytest.raises(DataError):
        train(load_config(None, [*args, f"output_dir={kept}"]))
    assert [p.name for p in kept.iterdir()] == ["notes.txt"]


def test_stale_temporaries_are_removed_and_weights_share_the_checkpoint_permissions(tmp_path):
    out = tmp_path / "run"
    train(tiny_digits_config(out, "train.epochs=1"))
    stale = out / "checkpoints" / ".epoch_0002.k1ll3d"
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"half")
    train(tiny_digits_config(out, "train.epochs=2", "resume=true"))
    assert not stale.exists()
    folder = load_checkpoint(out).path
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in folder.iterdir()}
    assert modes["model.safetensors"] == modes["state.pt"] == 0o666 & ~_umask()


def test_output_dir_that_is_a_file_is_named(tmp_path):
    target = tmp_path / "taken"
    target.write_text("not a folder")
    with pytest.raises(RunDirError, match=rf"output_dir {target} is a file"):
        train(tiny_digits_config(target))


@pytest.mark.parametrize("inside", [False, True], ids=["the folder", "a new folder in it"])
def test_unwritable_output_dir_is_named_before_anything_runs(tmp_path, monkeypatch, inside):
    locked = tmp_path / "locked"
    locked.mkdir()
    deny_writes(locked, monkeypatch)
    out = locked / "run" if inside else locked
    with pytest.raises(RunDirError, match=re.escape(f"output_dir {out} cannot be written ({locked} is not "
                                                    f"writable); choose another output_dir")):
        train(tiny_digits_config(out))
    assert not list(locked.iterdir())


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_a_full_disk_while_saving_is_named_and_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    out = tmp_path / "run"
    calls = []

    def fills_the_disk_on_the_second_save(state_dict, path, *, metadata=None):
        calls.append(path)
        if len(calls) == 2:
            Path(path).write_bytes(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        save_weights(state_dict, path, metadata=metadata)

    monkeypatch.setattr(checkpoint_module, "save_weights", fills_the_disk_on_the_second_save)
    with pytest.raises(CheckpointError, match=r"could not save checkpoint epoch_0002 .*No space left on device; "
                                              r"the newest checkpoint is still .*epoch_0001"):
        train(tiny_digits_config(out, "train.epochs=2"))
    assert (out / "checkpoints" / "last").read_text() == "epoch_0001"
    assert [p.name for p in (out / "checkpoints").iterdir() if p.is_dir()] == ["epoch_0001"]  # no half-written folder
