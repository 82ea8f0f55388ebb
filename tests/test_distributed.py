"""Two processes (torchrun, gloo on CPU) train to the same weights as one with the same global batch,
and a loss that goes wrong on one of them stops both with the same error."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from safetensors.torch import load_file

from helpers import TINY_DIGITS, tiny_digits_config
from vislab.config import parse_overrides
from vislab.engine.run import train

REPO = Path(__file__).resolve().parents[1]


def test_two_processes_match_one(tmp_path):
    single = tmp_path / "single"
    train(tiny_digits_config(single))  # 16 images per step on one process

    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(yaml.safe_dump(parse_overrides(TINY_DIGITS)))
    double = tmp_path / "double"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         "-m", "vislab", "train", str(recipe), "data.batch_size=8", f"output_dir={double}"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "val top1" in result.stdout  # rank 0 printed the summary line ...
    assert result.stdout.count("val top1") == 1  # ... and only rank 0

    a = load_file(str(single / "checkpoints" / "epoch_0002" / "model.safetensors"))
    b = load_file(str(double / "checkpoints" / "epoch_0002" / "model.safetensors"))
    diff = max((a[k] - b[k]).abs().max().item() for k in a)
    assert diff < 1e-4, diff
    # only rank 0 wrote files: one metrics stream, one set of event files
    assert len(list((double / "tensorboard").iterdir())) == 1


def run_to_the_end(command: list[str], *, cwd: Path, env: dict, timeout: float) -> int:
    """torchrun ``command``'s exit status; past ``timeout`` seconds the test fails (a process is
    waiting for another that will not come) once torchrun is stopped with SIGTERM, on which it ends
    its workers (each in a session of its own, out of reach of a signal to torchrun's group)."""
    with subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) as process:
        try:
            return process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.terminate()
            process.wait()
            pytest.fail(f"the processes did not end within {timeout} s")


def test_a_nan_loss_on_one_process_stops_both_with_one_error(tmp_path):
    """Process 1 alone gets a NaN loss at step 2: both processes stop there with the same error,
    instead of process 0 going on into the gradient all-reduce and waiting there."""
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(yaml.safe_dump(parse_overrides(TINY_DIGITS)))
    logs = tmp_path / "logs"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    returncode = run_to_the_end(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         "--monitor-interval=1",  # the process that stops second still prints before torchrun ends it
         f"--log-dir={logs}", "--redirects=3", str(REPO / "tests" / "nan_on_rank.py"), "1", "2",
         "train", str(recipe), "data.batch_size=8", "train.epochs=1", f"output_dir={tmp_path / 'run'}"],
        cwd=tmp_path, env=env, timeout=180)
    assert returncode != 0
    errors = {log.parent.name: [line for line in log.read_text().splitlines() if line.startswith("vislab train: error")]
              for log in logs.glob("*/attempt_0/*/stderr.log")}  # torchrun's folder per process
    assert sorted(errors) == ["0", "1"], errors
    assert errors["0"] == errors["1"] == [
        "vislab train: error: loss is nan on process 1 (of 2 processes) at step 2 (epoch 1); training stopped "
        "and nothing was saved after it; no checkpoint had been written yet"]
