"""The detection recipes load and build their models; the ViT detection-transfer pipeline (MAE on
the shapes images, then a ViTDet whose trunk starts from it) runs end to end at a tiny size."""
from __future__ import annotations

from pathlib import Path

import pytest

from vislab.config import load_config, model_kwargs
from vislab.engine.optim import param_groups
from vislab.engine.run import train
from vislab.models import create_model
from vislab.models.complexity import count_params, on_meta
from vislab.models.registry import get_entry

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
RECIPES = sorted(p.stem for p in (CONFIGS / "detection").glob("*.yaml"))


@pytest.mark.parametrize("recipe", RECIPES)
def test_detection_recipe_loads_and_builds(recipe):
    cfg = load_config(CONFIGS / "detection" / f"{recipe}.yaml", ["data.root=/data/coco"])
    assert cfg.task == "detection"
    model = on_meta(lambda: create_model(cfg.model.name, num_classes=80, **model_kwargs(cfg)))
    reference = get_entry(cfg.model.name).reference
    if not model_kwargs(cfg) and reference is not None and reference.params is not None:
        assert count_params(model) == reference.params  # the recipe trains the published model
    groups = param_groups(model, weight_decay=cfg.optim.weight_decay,
                          decay_norm_and_bias=cfg.optim.decay_norm_and_bias, layer_decay=cfg.optim.layer_decay)
    assert sum(len(g["params"]) for g in groups) == sum(p.requires_grad for p in model.parameters())


TINY_MAE = ["model.embed_dim=32", "model.depth=2", "model.num_heads=2", "model.decoder_dim=16", "model.decoder_depth=1",
            "model.decoder_heads=2", "model.img_size=64", "data.image_size=64", "data.val_resize=64",
            "data.batch_size=4", "data.num_workers=0", "data.synthetic_train=8", "data.synthetic_val=4",
            "data.knn_bank=8", "train.epochs=1", "train.eval_every=1", "train.log_every=1", "train.amp=false"]
TINY_VITDET = ["model.embed_dim=32", "model.depth=2", "model.num_heads=2", "model.global_blocks=[1]",
               "model.img_size=96", "model.pretrain_img_size=96", "model.neck_channels=16", "model.head_conv_dim=16",
               "model.head_fc_dim=32", "data.min_sizes=[96]", "data.max_size=96", "data.test_min_size=96",
               "data.batch_size=2", "data.num_workers=0", "data.synthetic_train=8", "data.synthetic_val=4",
               "train.steps=3", "train.epochs=2", "train.eval_every=2", "train.log_every=1", "train.amp=false",
               "schedule.warmup_steps=1"]


def test_mae_on_shapes_images_then_vitdet_from_it(tmp_path):
    shapes = f"data.root={tmp_path / 'shapes'}"
    mae = train(load_config(CONFIGS / "pretrain" / "mae_vit_tiny_p8_shapes.yaml",
                            [*TINY_MAE, shapes, f"output_dir={tmp_path / 'mae'}"]))
    assert 0.0 <= mae["final"]["val/knn_top1"] <= 1.0
    detector = train(load_config(CONFIGS / "detection" / "shapes_vitdet_mae.yaml",
                                 [*TINY_VITDET, shapes, f"pretrained={tmp_path / 'mae'}",
                                  f"output_dir={tmp_path / 'det'}"]))
    assert 0.0 <= detector["final"]["val/bbox/AP"] <= 1.0  # pretrained= loaded strictly, or training stopped
