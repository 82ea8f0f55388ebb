"""End-to-end training runs on the embedded digits and on a generated ImageFolder tree."""
from __future__ import annotations

import io
import json
import shutil
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from helpers import make_image_folder, tiny_digits_config
from vislab.config import load_config
from vislab.data.datasets.image_folder import BadImageError, DataError
from vislab.engine.checkpoint import CheckpointError, load_checkpoint
from vislab.engine.run import RunDirError, train
from vislab.engine import precision
from vislab.engine.trainer import NonFiniteLossError


def read_metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_digits_run_writes_everything(tmp_path):
    out = tmp_path / "run"
    summary = train(tiny_digits_config(out))
    assert summary["epochs"] == 2 and summary["steps"] == 12  # 96 samples / 16 per batch x 2 epochs
    records = read_metrics(out)
    losses = [r["loss"] for r in records if "loss" in r]
    assert losses[-1] < losses[0]
    assert {"val/top1", "val/top5"} <= set(records[-1])
    assert (out / "config.yaml").is_file() and (out / "curves.png").stat().st_size > 1000
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    ckpt = load_checkpoint(out)
    assert ckpt.metadata["model"] == "resnet18" and "width: 0.25" in ckpt.metadata["config"]
    assert ckpt.state["step"] == 12 and ckpt.metadata["classes"] == [str(d) for d in range(10)]
    state = torch.load(ckpt.path / "state.pt", weights_only=True)
    assert "optimizer" in state and "rng" in state


def test_resume_continues_exactly(tmp_path):
    full = tmp_path / "full"
    train(tiny_digits_config(full, "train.epochs=3", "train.keep_last=3"))
    # a crash after epoch 1: drop the later checkpoints and point `last` back
    crashed = tmp_path / "crashed"
    shutil.copytree(full, crashed)
    for name in ("epoch_0002", "epoch_0003"):
        shutil.rmtree(crashed / "checkpoints" / name)
    (crashed / "checkpoints" / "last").write_text("epoch_0001")
    (crashed / "checkpoints" / "best").unlink()
    with (crashed / "metrics.jsonl").open("a") as f:
        f.write('{"step": 14, "epo')  # a record the crash cut short
    summary = train(tiny_digits_config(crashed, "train.epochs=3", "train.keep_last=3", "resume=true"))
    assert summary["steps"] == 18
    a = load_file(str(full / "checkpoints" / "epoch_0003" / "model.safetensors"))
    b = load_file(str(crashed / "checkpoints" / "epoch_0003" / "model.safetensors"))
    assert a.keys() == b.keys()
    assert max((a[k].double() - b[k].double()).abs().max().item() for k in a) <= 1e-6
    # the records the crashed run had logged after epoch 1 are replaced, not repeated
    resumed, uninterrupted = read_metrics(crashed), read_metrics(full)
    assert [r["step"] for r in resumed] == [r["step"] for r in uninterrupted]
    assert [r.get("loss") for r in resumed] == pytest.approx([r.get("loss") for r in uninterrupted], abs=1e-5)


def test_existing_run_needs_resume(tmp_path):
    out = tmp_path / "run"
    train(tiny_digits_config(out, "train.epochs=1"))
    with pytest.raises(RunDirError, match="resume=true"):
        train(tiny_digits_config(out, "train.epochs=1"))


def test_resume_without_run_is_an_error(tmp_path):
    with pytest.raises(RunDirError, match="no checkpoint"):
        train(tiny_digits_config(tmp_path / "nothing", "resume=true"))


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    out = tmp_path / "run"
    # the lr jumps by 1e30 after the first epoch, so the loss overflows during the second
    with pytest.raises(NonFiniteLossError, match=r"at step \d+ \(epoch 2\).*epoch_0001"):
        train(tiny_digits_config(out, "optim.name=sgd", "optim.lr=0.01", "schedule.name=step",
                                 "schedule.milestones=[1]", "schedule.gamma=1e30"))
    assert (out / "checkpoints" / "last").read_text() == "epoch_0001"
    assert load_checkpoint(out).state["epoch"] == 1


def test_image_folder_training_and_gradient_accumulation(tmp_path):
    root = make_image_folder(tmp_path / "data", per_class={"train": 8, "val": 4})
    out = tmp_path / "run"
    cfg = load_config(None, [
        "model.name=resnet18", "model.width=0.25", "model.norm=BN", "model.small_stem=true",
        "data.name=image_folder", f"data.root={root}", "data.image_size=32", "data.batch_size=4",
        "data.num_workers=2", "train.accumulate_steps=2", "train.epochs=3", "train.log_every=1",
        "train.clip_grad_norm=1.0", "optim.lr=0.05", f"output_dir={out}"])
    summary = train(cfg)
    assert summary["steps"] == 9  # 24 images / (4 x 2 accumulated) per step x 3 epochs
    assert summary["final"]["val/top1"] >= 0.66  # colour classes are easy
    assert load_checkpoint(out).metadata["classes"] == ["blue", "green", "red"]


def test_corrupt_image_is_named_or_skipped(tmp_path):
    root = make_image_folder(tmp_path / "data", per_class={"train": 4, "val": 2})
    bad = root / "train" / "red" / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    args = ["model.name=resnet18", "model.width=0.25", "model.norm=GN", "model.norm_groups=4",
            "data.name=image_folder", f"data.root={root}", "data.image_size=32", "data.batch_size=13",
            "data.num_workers=0", "train.epochs=1", "train.log_every=1"]
    with pytest.raises(BadImageError, match="broken.png"):
        train(load_config(None, args + [f"output_dir={tmp_path / 'a'}"]))
    summary = train(load_config(None, args + [f"output_dir={tmp_path / 'b'}", "data.skip_bad=true"]))
    assert summary["skipped_samples"] == 1
    assert read_metrics(tmp_path / "b")[0]["data/skipped"] == 1


@pytest.mark.parametrize("layout", ["missing", "empty", "no_images"])
def test_bad_dataset_paths(tmp_path, layout):
    root = tmp_path / "data"
    if layout != "missing":
        (root / "train").mkdir(parents=True)
        (root / "val").mkdir()
    if layout == "no_images":
        (root / "train" / "cat").mkdir()
        (root / "val" / "cat").mkdir()
    cfg = load_config(None, ["data.name=image_folder", f"data.root={root}", f"output_dir={tmp_path / 'r'}",
                             "model.width=0.25", "data.num_workers=0"])
    with pytest.raises(DataError, match=str(root)):
        train(cfg)


def test_truncated_and_foreign_checkpoints(tmp_path):
    out = tmp_path / "run"
    train(tiny_digits_config(out, "train.epochs=1"))
    truncated = tmp_path / "truncated"
    shutil.copytree(out, truncated)
    state = truncated / "checkpoints" / "epoch_0001" / "state.pt"
    state.write_bytes(state.read_bytes()[: state.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="state.pt is corrupt or truncated"):
        train(tiny_digits_config(truncated, "train.epochs=2", "resume=true"))
    weights = truncated / "checkpoints" / "epoch_0001" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="model.safetensors is corrupt or truncated"):
        train(tiny_digits_config(truncated, "train.epochs=2", "resume=true"))
    # the checkpoint of a half-width model does not fit a full-width one: the keys are named
    with pytest.raises(CheckpointError, match=r"mis-shaped: backbone\.res2\.0\.conv1\.weight"):
        train(tiny_digits_config(out, "train.epochs=2", "resume=true", "model.width=0.5"))


@pytest.mark.parametrize("emulated", [False, True])
def test_bf16_autocast_on_cpu_trains_and_warns_where_emulated(tmp_path, monkeypatch, emulated):
    monkeypatch.setattr(precision, "cpu_emulates_bf16", lambda: emulated)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        summary = train(tiny_digits_config(tmp_path / "run", "train.amp=true", "train.amp_dtype=bf16"))
    records = read_metrics(tmp_path / "run")
    assert summary["steps"] == 12 and all(r["loss"] == r["loss"] for r in records if "loss" in r)
    warned = [w for w in caught if "AVX512-BF16 or AMX" in str(w.message)]
    assert len(warned) == (1 if emulated else 0)


def test_fp16_needs_cuda(tmp_path):
    with pytest.raises(ValueError, match="fp16 needs CUDA"):
        train(tiny_digits_config(tmp_path / "run", "train.amp=true", "train.amp_dtype=fp16", "train.device=cpu"))


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("stream_type", [io.StringIO, _Terminal])
def test_progress_is_a_bar_on_a_terminal_and_lines_otherwise(tmp_path, stream_type):
    from vislab.engine.distributed import DistInfo
    from vislab.engine.hooks import ProgressHook
    from vislab.engine.trainer import Trainer
    from vislab.tasks import build_task

    cfg = tiny_digits_config(tmp_path / "run", "train.epochs=1")
    trainer = Trainer(cfg, build_task(cfg), run_dir=tmp_path / "run", device=torch.device("cpu"),
                      dist=DistInfo())
    stream = stream_type()
    trainer.hooks = [h for h in trainer.hooks if not isinstance(h, ProgressHook)]
    trainer.hooks.append(ProgressHook(total_steps=trainer.total_steps, stream=stream))
    trainer.fit()
    text = stream.getvalue()
    if stream_type is _Terminal:
        assert "\r" in text and ("it/s" in text or "s/it" in text) and "<" in text  # tqdm: rate, ETA
        assert "img_s=" in text and "loss=" in text and "lr=" in text
    else:
        lines = [line for line in text.splitlines() if line.startswith("epoch")]
        assert any("img/s eta" in line and "loss" in line and " lr " in line for line in lines)
        assert "\r" not in text
