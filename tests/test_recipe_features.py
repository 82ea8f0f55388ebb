"""Recipe features of the shared trainer: layer-wise lr decay, EMA, mixing, augmentation,
lr scaling, step budgets, few-shot subsets, backbone-only initialisation, BiT-HyperRule."""
from __future__ import annotations

import json
from collections import Counter

import pytest
import torch
from PIL import Image
from torch import nn

import vislab
from helpers import tiny_digits_config
from vislab.config import load_config
from vislab.data.datasets.digits import DigitsDataset
from vislab.data.transforms.classification import train_transform
from vislab.data.transforms.mixing import BatchMixing
from vislab.engine.checkpoint import load_checkpoint
from vislab.engine.optim import param_groups
from vislab.engine.run import train
from vislab.models.classifier import ImageClassifier
from vislab.tasks.bit_hyperrule import hyperrule
from vislab.tasks.classification import ClassificationTask, few_shot
from vislab.weights import WeightsError, save_weights


class NumberedBackbone(nn.Module):
    """Three linear 'layers' with ids 0, 1, 2 and a final norm at num_lr_layers."""

    num_features = 4

    def __init__(self):
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(4, 4) for _ in range(3))
        self.norm = nn.LayerNorm(4)

    def lr_layer_id(self, name: str) -> int:
        return int(name.split(".")[1]) if name.startswith("layers.") else self.num_lr_layers

    @property
    def num_lr_layers(self) -> int:
        return 3

    def forward_pooled(self, x):
        for layer in self.layers:
            x = layer(x)
        return self.norm(x)


def test_layer_decay_scales_lr_by_depth():
    model = ImageClassifier(NumberedBackbone(), num_classes=2)
    groups = param_groups(model, weight_decay=0.05, decay_norm_and_bias=False, layer_decay=0.5)
    scale_of = {id(p): g["lr_scale"] for g in groups for p in g["params"]}
    decay_of = {id(p): g["weight_decay"] for g in groups for p in g["params"]}
    layers = model.backbone.layers
    assert [scale_of[id(layers[i].weight)] for i in range(3)] == [0.125, 0.25, 0.5]
    assert scale_of[id(model.head.fc.weight)] == 1.0 and scale_of[id(model.backbone.norm.weight)] == 1.0
    assert decay_of[id(layers[0].weight)] == 0.05 and decay_of[id(layers[0].bias)] == 0.0


def test_layer_decay_refuses_models_without_layer_ids():
    with pytest.raises(ValueError, match="no layer ids"):
        param_groups(vislab.create_model("resnet18", num_classes=2, width=0.25), weight_decay=0.0,
                     decay_norm_and_bias=False, layer_decay=0.65)


def test_mixing_gives_soft_targets_that_sum_to_one():
    torch.manual_seed(0)
    mixing = BatchMixing(num_classes=5, mixup_alpha=0.8, cutmix_alpha=1.0)
    images, labels = torch.rand(6, 3, 16, 16), torch.tensor([0, 1, 2, 3, 4, 0])
    mixed, targets = mixing(images, labels)
    assert mixed.shape == images.shape and targets.shape == (6, 5)
    assert torch.allclose(targets.sum(1), torch.ones(6))
    assert not torch.equal(mixed, images)
    with pytest.raises(ValueError):
        BatchMixing(num_classes=5, mixup_alpha=0.0, cutmix_alpha=0.0)


def test_randaugment_and_erasing_change_the_image_reproducibly():
    image = Image.fromarray((torch.rand(48, 48, 3) * 255).byte().numpy())
    kwargs = dict(image_size=32, crop_scale=[1.0, 1.0], hflip=False, mean=[0.5] * 3, std=[0.5] * 3)
    plain = train_transform(**kwargs)
    heavy = train_transform(**kwargs, randaugment_magnitude=9, randaugment_ops=2, random_erasing=1.0)
    torch.manual_seed(3)
    a = heavy(image)
    torch.manual_seed(3)
    b = heavy(image)
    torch.manual_seed(3)
    assert torch.equal(a, b) and a.shape == (3, 32, 32)
    assert not torch.equal(a, plain(image))
    assert (a == 0).any()  # erased patch


def test_bit_train_resize_crops_a_square():
    image = Image.new("RGB", (40, 30))
    out = train_transform(image_size=128, crop_scale=[0.08, 1.0], hflip=True, mean=[0.5] * 3,
                          std=[0.5] * 3, train_resize=160)(image)
    assert out.shape == (3, 128, 128)


def test_ema_is_evaluated_saved_and_resumed(tmp_path):
    out = tmp_path / "run"
    summary = train(tiny_digits_config(out, "train.ema_decay=0.9", "train.epochs=1"))
    assert {"val_ema/top1", "val_ema/top5", "val/top1"} <= set(summary["final"])
    ckpt = load_checkpoint(out)
    assert ckpt.ema is not None and ckpt.ema.keys() == ckpt.model.keys()
    assert any(not torch.equal(ckpt.ema[k], ckpt.model[k]) for k in ckpt.model)
    assert int(ckpt.state["ema_updates"]) == 6
    resumed = train(tiny_digits_config(out, "train.ema_decay=0.9", "train.epochs=2", "resume=true"))
    assert resumed["steps"] == 12 and int(load_checkpoint(out).state["ema_updates"]) == 12


def test_mixup_cutmix_run_trains(tmp_path):
    summary = train(tiny_digits_config(tmp_path / "run", "data.mixup_alpha=0.8", "data.cutmix_alpha=1.0",
                                       "train.label_smoothing=0.1"))
    assert summary["steps"] == 12 and summary["final"]["val/top1"] >= 0.0


def test_base_lr_scales_with_global_batch_and_steps_budget(tmp_path):
    out = tmp_path / "run"
    summary = train(tiny_digits_config(out, "optim.base_lr=0.0128", "schedule.name=constant",
                                       "schedule.warmup_epochs=0", "train.steps=5", "train.log_every=1",
                                       "train.accumulate_steps=2"))
    assert summary["steps"] == 5 and summary["epochs"] == 2  # 3 steps per epoch of 2x16 images
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    lrs = [r["lr"] for r in records if "lr" in r]
    assert len(lrs) == 5 and all(lr == pytest.approx(0.0128 * 32 / 256) for lr in lrs)


def test_few_shot_takes_k_per_class_deterministically():
    digits = DigitsDataset("train")
    a, b = few_shot(digits, 10), few_shot(digits, 10)
    assert len(a) == 100 and list(a.indices) == list(b.indices)
    assert Counter(a.labels) == {c: 10 for c in range(10)}
    assert [digits.labels[i] for i in a.indices] == a.labels
    with pytest.raises(ValueError, match="fewer training images"):
        few_shot(digits, 500)


@pytest.mark.parametrize("examples, area, steps, milestones, crop, mixup", [
    (100, 32 * 32, 500, [200, 300, 400], 128, 0.0),
    (50_000, 300 * 400, 10_000, [3000, 6000, 9000], 480, 0.1),
    (1_281_167, 400 * 500, 20_000, [6000, 12_000, 18_000], 480, 0.1),
])
def test_bit_hyperrule(examples, area, steps, milestones, crop, mixup):
    rule = hyperrule(num_examples=examples, image_area=area)
    assert rule["train"]["steps"] == steps and rule["schedule"]["milestone_steps"] == milestones
    assert rule["data"]["image_size"] == crop and rule["data"]["mixup_alpha"] == mixup
    assert rule["data"]["train_resize"] == (160 if crop == 128 else 512)


def test_hyperrule_recipe_resolves_from_the_data():
    cfg = load_config(None,
                      ["bit_hyperrule=true", "data.examples_per_class=10", "model.width=0.25"])
    task = ClassificationTask(cfg)
    assert task.cfg.train.steps == 500 and task.cfg.schedule.warmup_steps == 100
    assert task.cfg.data.image_size == 128 and task.cfg.data.train_resize == 160
    assert len(task.train_set) == 100


def test_pretrained_initialises_backbone_but_not_head(tmp_path):
    source = vislab.create_model("resnet18", num_classes=10, width=0.25)
    path = tmp_path / "pre.safetensors"
    save_weights(source.state_dict(), path)
    cfg = load_config(None, ["model.width=0.25", "model.num_classes=3", f"pretrained={path}",
                             "model.zero_init_head=true"])
    model = ClassificationTask(cfg).build_model()
    assert torch.equal(model.backbone.stem.conv.weight, source.backbone.stem.conv.weight)
    assert model.head.fc.weight.shape == (3, 128) and not model.head.fc.weight.any()
    wider = load_config(None, ["model.width=0.5", f"pretrained={path}"])
    with pytest.raises(WeightsError, match="mis-shaped"):
        ClassificationTask(wider).build_model()


def test_hyperrule_leaves_explicit_settings_alone():
    cfg = load_config(None, ["bit_hyperrule=true", "data.examples_per_class=10", "model.width=0.25",
                             "data.image_size=32", "train.steps=50"])
    task = ClassificationTask(cfg)
    assert task.cfg.data.image_size == 32 and task.cfg.train.steps == 50
    assert task.cfg.data.train_resize == 160 and task.cfg.schedule.warmup_steps == 100
