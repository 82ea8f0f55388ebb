"""Two processes (torchrun, gloo on CPU) train to the same weights as one with the same global batch."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

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
