"""The full-scale recipe files load and build; tiny variants of them train on digits."""
from __future__ import annotations

from pathlib import Path

import pytest

from vislab.config import load_config, model_kwargs
from vislab.engine.run import train
from vislab.models import create_model, model_info
from vislab.models.complexity import count_params, on_meta

CONFIGS = Path(__file__).resolve().parents[1] / "configs"

TINY = {
    "deit_vit_b16": ["model.embed_dim=32", "model.depth=2", "model.num_heads=2", "model.patch_size=8",
                     "model.img_size=32", "optim.layer_decay=0.75"],
    "convnext_tiny": ["model.depths=[1,1,1,1]", "model.dims=[8,16,32,64]"],
    "mvitv2_tiny": ["model.depths=[1,1,1,1]", "model.embed_dim=16", "model.img_size=32"],
}
DIGITS = ["data.name=digits", "data.image_size=32", "data.val_resize=32", "data.batch_size=8",
          "data.num_workers=0", "data.max_train_samples=32", "data.max_val_samples=16", "train.steps=3",
          "schedule.warmup_epochs=0", "train.log_every=1"]


@pytest.mark.parametrize("recipe", sorted(TINY))
def test_full_recipe_loads_and_builds(recipe):
    cfg = load_config(CONFIGS / "imagenet" / f"{recipe}.yaml", ["data.root=/data/imagenet"])
    model = on_meta(lambda: create_model(cfg.model.name, num_classes=1000, **model_kwargs(cfg)))
    assert count_params(model) == model_info(cfg.model.name)["params"]
    assert cfg.data.mixup_alpha > 0 and cfg.optim.name == "adamw" and cfg.train.epochs == 300


@pytest.mark.parametrize("recipe", sorted(TINY))
def test_tiny_variant_of_recipe_trains(recipe, tmp_path):
    cfg = load_config(CONFIGS / "imagenet" / f"{recipe}.yaml",
                      [*DIGITS, *TINY[recipe], f"output_dir={tmp_path / 'run'}"])
    summary = train(cfg)
    assert summary["steps"] == 3 and "val/top1" in summary["final"]
    if cfg.train.ema_decay:
        assert "val_ema/top1" in summary["final"]


def test_bit_recipe_loads():
    cfg = load_config(CONFIGS / "transfer" / "bit_hyperrule.yaml", ["data.root=/data/flowers"])
    assert cfg.bit_hyperrule and cfg.model.zero_init_head and cfg.optim.lr == 0.003
