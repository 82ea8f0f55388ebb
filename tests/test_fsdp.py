"""FSDP2 (``train.strategy=fsdp``): two processes (torchrun, gloo on CPU) train a tiny ViT to the
same weights as DDP from the same start, with accumulation, clipping, layer decay and an EMA.
Its checkpoints are sharded (torch.distributed.checkpoint): each resumes on one process, a DDP
checkpoint resumes under FSDP, and ``vislab export-weights`` gathers one into a single file.
BatchNorm models are refused."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from safetensors.torch import load_file

from helpers import TINY_DIGITS, tiny_digits_config
from vislab.cli import main
from vislab.config import load_config, parse_overrides
from vislab.engine.checkpoint import CheckpointError
from vislab.engine.run import train
from vislab.weights import read_sharded_weights, read_weights

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


def max_diff(a: Path | dict, b: Path | dict) -> float:
    x, y = (read_weights(w)[0] if isinstance(w, Path) else w for w in (a, b))
    assert x.keys() == y.keys()
    return max((x[k] - y[k]).abs().max().item() for k in x)


def test_fsdp_matches_ddp_with_sharded_checkpoints_that_resume_anywhere(tmp_path):
    recipe = tmp_path / "tiny_vit.yaml"
    recipe.write_text(yaml.safe_dump(parse_overrides(TINY_VIT)))
    torchrun(recipe, tmp_path / "ddp")
    torchrun(recipe, tmp_path / "fsdp", "train.strategy=fsdp")
    ddp, fsdp = tmp_path / "ddp" / "checkpoints", tmp_path / "fsdp" / "checkpoints"
    sharded = fsdp / "epoch_0002" / "sharded"
    assert sorted(p.name for p in sharded.glob("*.distcp")) == ["__0_0.distcp", "__1_0.distcp"]
    assert not (fsdp / "epoch_0002" / "model.safetensors").exists()
    assert max_diff(ddp / "epoch_0002" / "model.safetensors", sharded) < 1e-5
    assert max_diff(ddp / "epoch_0002" / "ema.safetensors", read_sharded_weights(sharded, prefix="ema")[0]) < 1e-5

    # the sharded checkpoint of epoch 1 continues on one process (same global batch) to the same weights
    single = tmp_path / "single"
    train(load_config(None, [*TINY_VIT, f"output_dir={single}", f"resume={fsdp / 'epoch_0001'}"]))
    assert max_diff(single / "checkpoints" / "epoch_0002" / "model.safetensors", sharded) < 1e-4
    # DDP's full checkpoint continues under FSDP, loaded into the shards
    torchrun(recipe, tmp_path / "fsdp_from_ddp", "train.strategy=fsdp", f"resume={ddp / 'epoch_0001'}")
    assert max_diff(ddp / "epoch_0002" / "model.safetensors",
                    tmp_path / "fsdp_from_ddp" / "checkpoints" / "epoch_0002" / "sharded") < 1e-5

    # export-weights gathers the run's last checkpoint (no evaluation beat the first: best is epoch 1 or 2)
    out = tmp_path / "vit.safetensors"
    assert main(["export-weights", str(fsdp / "epoch_0002"), str(out)]) == 0
    weights, metadata = read_weights(out)
    assert max_diff(weights, sharded) == 0.0 and metadata["model"] == "vit_s16" and metadata["epoch"] == 2
    assert main(["export-weights", str(fsdp / "epoch_0002"), str(out)]) == 1  # exists: --force needed
    assert main(["export-weights", str(tmp_path / "fsdp"), str(out), "--ema", "--force"]) == 0

    # a shard file cut short is named when resuming from it; resuming the run passes over it
    (sharded / "__1_0.distcp").write_bytes((sharded / "__1_0.distcp").read_bytes()[:100])
    with pytest.raises(CheckpointError, match="__1_0.distcp is missing or truncated"):
        train(load_config(None, [*TINY_VIT, f"output_dir={tmp_path / 'broken'}", f"resume={sharded.parent}"]))
    with pytest.warns(UserWarning, match="resuming from .*epoch_0001.*passed over.*__1_0.distcp is missing"):
        train(load_config(None, [*TINY_VIT, f"output_dir={tmp_path / 'fsdp'}", "resume=true",
                                 "train.checkpoint_format=sharded"]))
    assert max_diff(fsdp / "epoch_0002" / "sharded", single / "checkpoints" / "epoch_0002" / "model.safetensors") < 1e-6


def test_batchnorm_model_is_refused(tmp_path):
    with pytest.raises(ValueError, match="train.strategy=fsdp.*BatchNorm2d.*GN or LN.*train.strategy=ddp"):
        train(tiny_digits_config(tmp_path, "model.norm=BN", "train.strategy=fsdp"))


def test_sharded_checkpoints_of_one_process_resume_and_serve_eval(tmp_path, capsys):
    """``train.checkpoint_format=sharded`` outside FSDP: the run resumes to the weights of an
    uninterrupted full-format run, and ``vislab eval`` reads the sharded folder as weights."""
    train(tiny_digits_config(tmp_path / "full"))
    run = tmp_path / "sharded"
    train(tiny_digits_config(run, "train.checkpoint_format=sharded"))
    full = tmp_path / "full" / "checkpoints" / "epoch_0002" / "model.safetensors"
    assert max_diff(full, run / "checkpoints" / "epoch_0002" / "sharded") == 0.0
    resumed = tmp_path / "resumed"
    train(tiny_digits_config(resumed, "train.checkpoint_format=sharded", f"resume={run / 'checkpoints' / 'epoch_0001'}"))
    assert max_diff(full, resumed / "checkpoints" / "epoch_0002" / "sharded") < 1e-6
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(yaml.safe_dump(parse_overrides(TINY_DIGITS)))
    capsys.readouterr()
    assert main(["eval", str(recipe), f"weights={run}"]) == 0
    assert "val/top1" in capsys.readouterr().out
    assert (run / "checkpoints" / "epoch_0002" / "eval.json").is_file()
