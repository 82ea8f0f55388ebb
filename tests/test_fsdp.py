"""FSDP2 (``train.strategy=fsdp``): two processes (torchrun, gloo on CPU) train a tiny ViT to the
same weights as DDP from the same start, with accumulation, clipping, layer decay and an EMA; an
FSDP checkpoint resumes on one process; BatchNorm models are refused."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from safetensors.torch import load_file

from helpers import TINY_DIGITS, tiny_digits_config
from vislab.config import load_config, parse_overrides
from vislab.engine.run import train

REPO = Path(__file__).resolve().parents[1]
TINY_VIT = [o for o in TINY_DIGITS if not o.startswith("model.")] + [
    "model.name=vit_s16", "model.img_size=32", "model.patch_size=8", "model.embed_dim=32", "model.depth=2",
    "model.num_heads=2", "optim.layer_decay=0.75", "train.clip_grad_norm=0.5", "train.accumulate_steps=2",
    "train.ema_decay=0.9",
    "data.max_val_samples=65",  # 33 and 32 images: one process evaluates a batch more than the other
]


def torchrun(recipe: Path, out: Path, *overrides: str) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         "-m", "vislab", "train", str(recipe), "data.batch_size=8", f"output_dir={out}", *overrides],
        cwd=recipe.parent, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


def max_diff(a: Path, b: Path) -> float:
    x, y = load_file(str(a)), load_file(str(b))
    assert x.keys() == y.keys()
    return max((x[k] - y[k]).abs().max().item() for k in x)


def test_fsdp_matches_ddp_and_resumes_on_one_process(tmp_path):
    recipe = tmp_path / "tiny_vit.yaml"
    recipe.write_text(yaml.safe_dump(parse_overrides(TINY_VIT)))
    torchrun(recipe, tmp_path / "ddp")
    torchrun(recipe, tmp_path / "fsdp", "train.strategy=fsdp")
    ddp, fsdp = tmp_path / "ddp" / "checkpoints", tmp_path / "fsdp" / "checkpoints"
    for file in ("model.safetensors", "ema.safetensors"):
        assert max_diff(ddp / "epoch_0002" / file, fsdp / "epoch_0002" / file) < 1e-5, file

    # the FSDP checkpoint of epoch 1 continues on one process (same global batch) to the same weights
    single = tmp_path / "single"
    train(load_config(None, [*TINY_VIT, f"output_dir={single}", f"resume={fsdp / 'epoch_0001'}"]))
    assert max_diff(single / "checkpoints" / "epoch_0002" / "model.safetensors",
                    fsdp / "epoch_0002" / "model.safetensors") < 1e-4


def test_batchnorm_model_is_refused(tmp_path):
    with pytest.raises(ValueError, match="train.strategy=fsdp.*BatchNorm2d.*GN or LN.*train.strategy=ddp"):
        train(tiny_digits_config(tmp_path, "model.norm=BN", "train.strategy=fsdp"))
