"""Self-supervised pre-training end to end on a few digits (MAE, MoCo v2, MoCo v3), then a
linear probe and fine-tuning from the pre-trained encoder."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from helpers import tensorboard_images
from vislab.config import ConfigError, load_config
from vislab.engine.run import train
from vislab.models.classifier import LinearProbeHead
from vislab.tasks import build_task
from vislab.weights import read_weights

DIGITS = ["data.name=digits", "data.image_size=32", "data.val_resize=32", "data.hflip=false",
          "data.batch_size=16", "data.num_workers=0", "data.max_train_samples=64", "data.max_val_samples=32",
          "data.knn_bank=64", "train.epochs=1", "train.log_every=2", "optim.name=adamw", "optim.lr=1e-3"]
TINY_VIT = ["model.img_size=32", "model.patch_size=8", "model.embed_dim=48", "model.depth=2", "model.num_heads=3"]
TINY_R18 = ["model.backbone_options={width: 0.25, norm: GN, norm_groups: 4, small_stem: true}"]


def pretrain(tmp_path: Path, *overrides: str) -> dict:
    return train(load_config(None, ["task=pretrain", *DIGITS, f"output_dir={tmp_path}", *overrides]))


def test_mae_pretraining_reports_knn_and_writes_reconstructions(tmp_path):
    summary = pretrain(tmp_path, "model.name=mae_vit_tiny_p4", *TINY_VIT, "model.decoder_dim=32",
                       "model.decoder_depth=1", "model.decoder_heads=2")
    final = summary["final"]
    assert final["val/loss"] > 0 and 0 <= final["val/knn_top1"] <= 1
    assert (tmp_path / "val" / "reconstruction.png").stat().st_size > 0
    assert "val/reconstruction" in tensorboard_images(tmp_path)


@pytest.fixture(scope="module")
def moco_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("moco")
    summary = pretrain(run, "model.name=moco_v2_r18_gn", *TINY_R18, "model.queue_size=64", "model.mlp_hidden=32")
    return run, summary


def test_moco_v2_pretraining_fills_its_queue(moco_run):
    run, summary = moco_run
    state, _ = read_weights(Path(summary["last_checkpoint"]) / "model.safetensors")
    assert state["queue_ptr"].item() == (4 * 16) % 64  # 4 steps of 16 keys, wrapped around 64
    assert 0 <= summary["final"]["val/knn_top1"] <= 1


def test_moco_v3_momentum_schedule_spans_the_run(tmp_path):
    summary = pretrain(tmp_path, "model.name=moco_v3_r50", "model.backbone=resnet18", *TINY_R18,
                       "model.mlp_dim=32", "model.dim=16")
    state, _ = read_weights(Path(summary["last_checkpoint"]) / "model.safetensors")
    assert state["step"].item() == 4  # one epoch of 64 images at 16 per step
    model = build_task(load_config(None, ["task=pretrain", *DIGITS, "model.name=moco_v3_r50", "model.backbone=resnet18",
                                          *TINY_R18, "model.mlp_dim=32", "model.dim=16"])).build_model()
    model.load_state_dict(state)
    model.set_total_steps(4)
    assert model.current_momentum() == pytest.approx(1.0)


def test_linear_probe_from_a_pretraining_run(moco_run, tmp_path):
    run, _ = moco_run
    probe = ["model.name=resnet18", "model.width=0.25", "model.norm=GN", "model.norm_groups=4", "model.small_stem=true",
             "linear_probe=true", *DIGITS, "optim.name=sgd", "optim.lr=0.1", f"pretrained={run}"]
    cfg = load_config(None, [*probe, f"output_dir={tmp_path}"])
    model = build_task(cfg).build_model()
    pretrained, _ = read_weights(next(run.glob("checkpoints/epoch_*/model.safetensors")))
    assert torch.equal(model.backbone.res2[0].conv1.weight, pretrained["backbone.res2.0.conv1.weight"])
    assert isinstance(model.head, LinearProbeHead)
    assert not any(p.requires_grad for p in model.backbone.parameters())
    assert not model.train().backbone.training
    summary = train(cfg)
    final_state, _ = read_weights(Path(summary["last_checkpoint"]) / "model.safetensors")
    assert torch.equal(final_state["backbone.res2.0.conv1.weight"], pretrained["backbone.res2.0.conv1.weight"])
    assert "head.norm.running_mean" in final_state


def test_task_and_model_must_agree():
    with pytest.raises(ConfigError, match="resnet18 is a classification model, but task=pretrain"):
        build_task(load_config(None, ["task=pretrain", *DIGITS, "model.name=resnet18"]))
