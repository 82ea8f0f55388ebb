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


def test_bit_digits_recipe_resolves_the_rule_from_the_data():
    from vislab.tasks.classification import ClassificationTask

    task = ClassificationTask(load_config(CONFIGS / "transfer" / "bit_digits_10shot.yaml"))
    cfg = task.cfg
    assert (cfg.train.steps, cfg.schedule.name, cfg.schedule.warmup_steps) == (500, "step", 100)
    assert (cfg.data.train_resize, cfg.data.image_size, cfg.data.mixup_alpha) == (36, 32, 0.0)
    assert len(task.train_set) == 100


def test_few_shot_transfer_beats_scratch(tmp_path):
    """A digits-pre-trained backbone fine-tuned on 10 images per class beats the same budget
    from scratch (the BiT few-shot claim, in miniature: 32x32 and a 60-step rule)."""
    pre = tmp_path / "pre"
    train(load_config(CONFIGS / "quickstart" / "digits.yaml",
                      ["train.epochs=2", "train.eval_every=2", f"output_dir={pre}"]))
    shot = ["model.name=resnet18", "model.width=0.5", "model.norm=GN", "model.norm_groups=8",
            "model.zero_init_head=true", "data.name=digits", "data.image_size=32", "data.val_resize=32",
            "data.train_resize=36", "data.hflip=false", "data.mean=[0.5,0.5,0.5]", "data.std=[0.5,0.5,0.5]",
            "data.num_workers=0", "data.examples_per_class=10", "data.batch_size=20", "bit_hyperrule=true",
            "train.steps=60", "schedule.warmup_steps=10", "schedule.milestone_steps=[30,45]",
            "optim.lr=0.003", "train.eval_every=100", "train.log_every=20"]
    transfer = train(load_config(None, [*shot, f"pretrained={pre}", f"output_dir={tmp_path / 't'}"]))
    scratch = train(load_config(None, [*shot, f"output_dir={tmp_path / 's'}"]))
    assert transfer["final"]["val/top1"] > scratch["final"]["val/top1"] + 0.1, (transfer, scratch)
