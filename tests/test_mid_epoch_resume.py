"""Mid-epoch checkpoints and elastic restarts: a run killed inside an epoch and resumed (by hand,
``resume=auto``, or a torchrun restart) ends with the weights of the uninterrupted run, and its
metrics.jsonl records each step once."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from safetensors.torch import load_file

from crash_hook import InjectedCrash, default_hooks_then_crash
from helpers import TINY_DIGITS, tiny_digits_config
from vislab.config import ConfigError, load_config, parse_overrides
from vislab.data.sampler import TrainSampler
from vislab.engine import elastic
from vislab.engine.run import RunDirError, prepare_run_dir, train
from vislab.engine.trainer import Trainer

REPO = Path(__file__).resolve().parents[1]
# one epoch of 8 steps; checkpoints at steps 3 and 6, records at steps 2, 4, 6, 8
ONE_PROCESS = ["data.max_train_samples=128", "data.max_val_samples=16", "train.epochs=1",
               "train.checkpoint_every_steps=3"]
# two processes of 8 images: two epochs of 4 steps; mid-epoch checkpoints at steps 2 and 6
TWO_PROCESSES = ["data.batch_size=8", "data.max_train_samples=64", "data.max_val_samples=16",
                 "train.log_every=4"]


def read_metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def max_difference(a_file: Path, b_file: Path) -> float:
    a, b = load_file(str(a_file)), load_file(str(b_file))
    assert a.keys() == b.keys()
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a)


def test_sampler_starts_at_a_batch_with_the_epoch_order_and_seeds():
    whole = TrainSampler(40, batch_size=4, seed=3, rank=1, world_size=2)
    whole.set_epoch(2)
    tail = TrainSampler(40, batch_size=4, seed=3, rank=1, world_size=2)
    tail.set_epoch(2, start_batch=3)
    assert list(tail) == list(whole)[3 * 4:] and len(tail) == 2 * 4
    with pytest.raises(ValueError, match="start_batch=5 is outside epoch 2, which has 5 batches"):
        tail.set_epoch(2, start_batch=5)


def test_killed_mid_epoch_and_resumed_equals_uninterrupted(tmp_path, monkeypatch):
    full = tmp_path / "full"
    train(tiny_digits_config(full, *ONE_PROCESS))
    crashed = tmp_path / "crashed"
    with monkeypatch.context() as patch:
        patch.setattr(Trainer, "_default_hooks", default_hooks_then_crash(5))
        with pytest.raises(InjectedCrash):
            train(tiny_digits_config(crashed, *ONE_PROCESS))
    assert (crashed / "checkpoints" / "last").read_text() == "epoch_0000_step_00000003"
    assert [r["step"] for r in read_metrics(crashed)] == [2, 4]  # step 4: after the checkpoint

    summary = train(tiny_digits_config(crashed, *ONE_PROCESS, "resume=auto"))
    assert summary["steps"] == 8
    assert max_difference(full / "checkpoints" / "epoch_0001" / "model.safetensors",
                          crashed / "checkpoints" / "epoch_0001" / "model.safetensors") <= 1e-6
    resumed, uninterrupted = read_metrics(crashed), read_metrics(full)
    assert [r["step"] for r in resumed] == [r["step"] for r in uninterrupted] == [2, 4, 6, 8, 8]
    # the record at step 4 averages steps 3 and 4 across the resume, as without it
    assert [r.get("loss") for r in resumed] == pytest.approx([r.get("loss") for r in uninterrupted], abs=1e-6)


def test_checkpoint_every_minutes_saves_inside_epochs(tmp_path):
    out = tmp_path / "run"
    train(tiny_digits_config(out, "data.max_train_samples=64", "data.max_val_samples=16", "train.epochs=1",
                             "train.checkpoint_every_minutes=1e-9", "train.keep_last=10"))
    saved = sorted(p.name for p in (out / "checkpoints").iterdir() if p.is_dir())
    # every step is past the deadline; the epoch's last one is the epoch-end checkpoint's
    assert saved == ["epoch_0000_step_00000001", "epoch_0000_step_00000002", "epoch_0000_step_00000003",
                     "epoch_0001"]
    assert (out / "checkpoints" / "best").read_text() == "epoch_0001"


def test_bad_checkpoint_intervals_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="train.checkpoint_every_steps must be at least 1"):
        tiny_digits_config(tmp_path, "train.checkpoint_every_steps=0")
    with pytest.raises(ConfigError, match="train.checkpoint_every_minutes must be above 0"):
        tiny_digits_config(tmp_path, "train.checkpoint_every_minutes=-1")
    with pytest.raises(ConfigError, match="resume=auto needs output_dir"):
        load_config(None, ["resume=auto"])


def test_resume_auto_and_elastic_restarts_choose_the_run_folder(tmp_path, monkeypatch):
    out = tmp_path / "run"
    assert prepare_run_dir(tiny_digits_config(out, "resume=auto")) == (out, None)  # nothing yet: fresh
    (out / "checkpoints" / "epoch_0001").mkdir(parents=True)
    assert prepare_run_dir(tiny_digits_config(out, "resume=auto")) == (out, out / "checkpoints")

    monkeypatch.setenv("TORCHELASTIC_MAX_RESTARTS", "1")
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "job-1")
    with pytest.raises(ConfigError, match="--max-restarts 1 restarts the run in its output_dir: set output_dir"):
        prepare_run_dir(load_config(None, TINY_DIGITS))
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")
    # a folder another job wrote is not continued by a restart: resume=false refuses it as before
    (out / elastic.MARK_FILE).write_text("job-0")
    with pytest.raises(RunDirError, match="already holds a run"):
        prepare_run_dir(tiny_digits_config(out))
    elastic.mark(out)  # this job's first attempt wrote it: the restart continues it
    assert prepare_run_dir(tiny_digits_config(out)) == (out, out / "checkpoints")


def run_two_processes(tmp_path: Path, program: list[str], overrides: list[str], *, max_restarts: int = 0,
                      ok: bool = True) -> subprocess.CompletedProcess:
    """torchrun with 2 processes (gloo on CPU) of ``program`` (``-m vislab`` or the crash script)."""
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(yaml.safe_dump(parse_overrides(TINY_DIGITS + TWO_PROCESSES)))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": f"{REPO}{os.pathsep}{REPO / 'tests'}"}
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         f"--max-restarts={max_restarts}", *program, "train", str(recipe), *overrides],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert (result.returncode == 0) == ok, result.stdout[-3000:] + result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def uninterrupted_two_processes(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("two")
    out = tmp / "full"
    run_two_processes(tmp, ["-m", "vislab"], [f"output_dir={out}", "train.checkpoint_every_steps=2"])
    return out / "checkpoints" / "epoch_0002" / "model.safetensors"


def test_two_processes_killed_mid_epoch_and_resumed(tmp_path, uninterrupted_two_processes):
    out = tmp_path / "crashed"
    overrides = [f"output_dir={out}", "train.checkpoint_every_steps=2"]
    run_two_processes(tmp_path, [str(REPO / "tests" / "crash_hook.py"), "7"], overrides, ok=False)
    assert (out / "checkpoints" / "last").read_text() == "epoch_0001_step_00000006"
    run_two_processes(tmp_path, ["-m", "vislab"], [*overrides, "resume=true"])
    assert max_difference(uninterrupted_two_processes, out / "checkpoints" / "epoch_0002" / "model.safetensors") <= 1e-6
    steps = [r["step"] for r in read_metrics(out)]
    assert steps == [4, 4, 8, 8]  # a training record and an evaluation at each epoch end


def test_elastic_restart_resumes_without_being_told(tmp_path, uninterrupted_two_processes):
    out = tmp_path / "elastic"
    overrides = [f"output_dir={out}", "train.checkpoint_every_minutes=1e-9"]  # rank 0's clock: every step
    result = run_two_processes(tmp_path, [str(REPO / "tests" / "crash_hook.py"), "5", "--first-attempt-only"],
                               overrides, max_restarts=1)
    assert "injected crash after step 5" in result.stderr  # the first attempt died ...
    assert (out / elastic.MARK_FILE).is_file()
    # ... and the restart went on from its checkpoint at step 5 to the uninterrupted weights
    assert max_difference(uninterrupted_two_processes, out / "checkpoints" / "epoch_0002" / "model.safetensors") <= 1e-6
    assert [r["step"] for r in read_metrics(out)] == [4, 4, 8, 8]
