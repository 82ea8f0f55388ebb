"""Unit tests for vislab/config: schema defaults, _base_ inheritance, overrides and validation."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from vislab.config import Config, ConfigError, load_config, model_kwargs, parse_overrides, schema_keys, to_yaml

REPO = Path(__file__).resolve().parents[1]


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


# ---------------------------------------------------------------------------------------------
# Defaults
# ---------------------------------------------------------------------------------------------

def test_load_none_gives_schema_defaults():
    cfg = load_config(None)
    defaults = Config()
    assert OmegaConf.to_container(cfg) == dataclasses.asdict(defaults)
    assert cfg.optim.lr == 0.1
    assert cfg.train.epochs == 90
    assert cfg.model.name == "resnet18"
    assert cfg.recipe is None


def test_schema_keys_are_dotted():
    keys = schema_keys()
    assert "optim.lr" in keys
    assert "train.epochs" in keys
    assert "data.crop_scale" in keys
    assert "model" in keys
    assert "optim" not in keys  # sections are not leaves
    assert len(keys) == len(set(keys))


# ---------------------------------------------------------------------------------------------
# _base_ inheritance
# ---------------------------------------------------------------------------------------------

def test_base_inherits_and_overrides(tmp_path):
    write(tmp_path / "base.yaml", "optim:\n  lr: 0.5\n  momentum: 0.8\ntrain:\n  epochs: 7\n")
    recipe = write(tmp_path / "child.yaml", "_base_: base.yaml\noptim:\n  lr: 0.01\n")
    cfg = load_config(recipe)
    assert cfg.optim.lr == 0.01  # overridden
    assert cfg.optim.momentum == 0.8  # inherited, sibling of an overridden key
    assert cfg.train.epochs == 7  # inherited section
    assert cfg.optim.weight_decay == 1e-4  # schema default
    assert cfg.recipe == "child"
    assert "_base_" not in cfg


def test_two_level_base_chain_with_relative_paths(tmp_path):
    write(tmp_path / "a" / "root.yaml", "train:\n  epochs: 3\n  seed: 11\ndata:\n  batch_size: 4\n")
    write(tmp_path / "b" / "mid.yaml", "_base_: ../a/root.yaml\ntrain:\n  seed: 22\n  keep_last: 5\n")
    leaf = write(tmp_path / "c" / "leaf.yaml", "_base_: ../b/mid.yaml\ntrain:\n  keep_last: 9\n")
    cfg = load_config(leaf)
    assert cfg.train.epochs == 3  # from the root
    assert cfg.train.seed == 22  # mid overrides root
    assert cfg.train.keep_last == 9  # leaf overrides mid
    assert cfg.data.batch_size == 4


def test_list_of_bases_merged_in_order(tmp_path):
    write(tmp_path / "one.yaml", "optim:\n  lr: 1.0\n  momentum: 0.5\n")
    write(tmp_path / "two.yaml", "optim:\n  lr: 2.0\ntrain:\n  epochs: 5\n")
    recipe = write(tmp_path / "r.yaml", "_base_: [one.yaml, two.yaml]\ntrain:\n  seed: 3\n")
    cfg = load_config(recipe)
    assert cfg.optim.lr == 2.0  # later base wins
    assert cfg.optim.momentum == 0.5  # from the first base
    assert cfg.train.epochs == 5
    assert cfg.train.seed == 3


def test_overrides_win_over_recipe(tmp_path):
    recipe = write(tmp_path / "r.yaml", "optim:\n  lr: 0.3\n")
    cfg = load_config(recipe, ["optim.lr=0.7"])
    assert cfg.optim.lr == 0.7


def test_model_section_merges_keys(tmp_path):
    write(tmp_path / "base.yaml", "model:\n  name: resnet50\n  norm: GN\n")
    recipe = write(tmp_path / "r.yaml", "_base_: base.yaml\nmodel:\n  zero_init_residual: true\n")
    cfg = load_config(recipe, ["model.norm_groups=16"])
    assert cfg.model.name == "resnet50"
    assert model_kwargs(cfg) == {"norm": "GN", "zero_init_residual": True, "norm_groups": 16}


def test_missing_base_names_the_file(tmp_path):
    recipe = write(tmp_path / "r.yaml", "_base_: nowhere/missing_base.yaml\n")
    with pytest.raises(ConfigError) as info:
        load_config(recipe)
    assert "missing_base.yaml" in str(info.value)


def test_missing_recipe_names_the_file(tmp_path):
    with pytest.raises(ConfigError, match="absent_recipe.yaml"):
        load_config(tmp_path / "absent_recipe.yaml")


def test_self_inheritance_is_an_error(tmp_path):
    recipe = write(tmp_path / "loop.yaml", "_base_: loop.yaml\ntrain:\n  epochs: 2\n")
    with pytest.raises(ConfigError, match="loop.yaml"):
        load_config(recipe)


def test_inheritance_cycle_through_two_files_is_an_error(tmp_path):
    write(tmp_path / "x.yaml", "_base_: y.yaml\n")
    write(tmp_path / "y.yaml", "_base_: x.yaml\n")
    with pytest.raises(ConfigError):
        load_config(tmp_path / "x.yaml")


def test_diamond_inheritance_is_not_a_cycle(tmp_path):
    write(tmp_path / "root.yaml", "train:\n  epochs: 4\n")
    write(tmp_path / "l.yaml", "_base_: root.yaml\noptim:\n  lr: 0.2\n")
    write(tmp_path / "r.yaml", "_base_: root.yaml\noptim:\n  momentum: 0.7\n")
    cfg = load_config(write(tmp_path / "top.yaml", "_base_: [l.yaml, r.yaml]\n"))
    assert (cfg.train.epochs, cfg.optim.lr, cfg.optim.momentum) == (4, 0.2, 0.7)


def test_non_mapping_yaml_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="mapping"):
        load_config(write(tmp_path / "list.yaml", "- 1\n- 2\n"))


# ---------------------------------------------------------------------------------------------
# Overrides
# ---------------------------------------------------------------------------------------------

def test_parse_overrides_types():
    parsed = parse_overrides([
        "train.epochs=12", "optim.lr=2.5e-3", "optim.nesterov=true", "data.hflip=False",
        "data.crop_scale=[0.5, 1.0]", "output_dir=null", "schedule.milestones=[30,60]",
        "model.norm=GN", "train.clip_grad_norm=", "optim.eps=1.0e-6",
    ])
    assert parsed["train"]["epochs"] == 12 and type(parsed["train"]["epochs"]) is int
    assert parsed["optim"]["lr"] == 2.5e-3 and isinstance(parsed["optim"]["lr"], float)
    assert parsed["optim"]["nesterov"] is True
    assert parsed["data"]["hflip"] is False
    assert parsed["data"]["crop_scale"] == [0.5, 1.0]
    assert parsed["output_dir"] is None
    assert parsed["schedule"]["milestones"] == [30, 60]
    assert parsed["model"]["norm"] == "GN"
    assert parsed["train"]["clip_grad_norm"] is None
    assert parsed["optim"]["eps"] == 1e-6


def test_typed_schema_key_accepts_exponent_without_dot():
    cfg = load_config(None, ["optim.lr=1e-4", "optim.betas=[0.9,1e-3]"])
    assert cfg.optim.lr == pytest.approx(1e-4)
    assert list(cfg.optim.betas) == pytest.approx([0.9, 1e-3])


def test_model_float_option_accepts_exponent_without_dot():
    cfg = load_config(None, ["model.dropout=1e-1"])
    assert cfg.model.dropout == pytest.approx(0.1)


def test_overrides_applied_to_config():
    cfg = load_config(None, ["train.epochs=12", "optim.lr=0.25", "optim.nesterov=true",
                             "data.crop_scale=[0.5,1.0]", "train.clip_grad_norm=1.5",
                             "train.amp=null", "data.max_train_samples=100"])
    assert cfg.train.epochs == 12
    assert cfg.optim.lr == 0.25
    assert cfg.optim.nesterov is True
    assert list(cfg.data.crop_scale) == [0.5, 1.0]
    assert cfg.train.clip_grad_norm == 1.5
    assert cfg.train.amp is None
    assert cfg.data.max_train_samples == 100


def test_int_override_for_float_key_is_accepted():
    cfg = load_config(None, ["optim.lr=1"])
    assert cfg.optim.lr == 1.0


@pytest.mark.parametrize("item", ["train.epochs", "=3"])
def test_malformed_override_is_an_error(item):
    with pytest.raises(ConfigError):
        parse_overrides([item])


# ---------------------------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("override, key, suggestion", [
    ("optim.lrr=0.1", "optim.lrr", "optim.lr"),
    ("train.epoch=3", "train.epoch", "train.epochs"),
    ("data.batchsize=8", "data.batchsize", "data.batch_size"),
])
def test_unknown_override_key_suggests_closest(override, key, suggestion):
    with pytest.raises(ConfigError) as info:
        load_config(None, [override])
    message = str(info.value)
    assert key in message
    assert "did you mean" in message and suggestion in message


def test_unknown_key_in_file_suggests_closest(tmp_path):
    recipe = write(tmp_path / "r.yaml", "optim:\n  lrr: 0.1\n")
    with pytest.raises(ConfigError) as info:
        load_config(recipe)
    message = str(info.value)
    assert "optim.lrr" in message
    assert "optim.lr" in message.split("did you mean", 1)[1]


def test_unknown_key_in_base_file_is_reported(tmp_path):
    write(tmp_path / "base.yaml", "train:\n  epoch: 3\n")
    recipe = write(tmp_path / "r.yaml", "_base_: base.yaml\n")
    with pytest.raises(ConfigError) as info:
        load_config(recipe)
    assert "train.epoch" in str(info.value) and "train.epochs" in str(info.value)


def test_unknown_top_level_section_is_an_error():
    with pytest.raises(ConfigError, match="optimizer"):
        load_config(None, ["optimizer.lr=0.1"])


def test_wrong_type_names_the_key():
    with pytest.raises(ConfigError) as info:
        load_config(None, ["train.epochs=abc"])
    assert "train.epochs" in str(info.value)


def test_wrong_type_in_file_names_the_key(tmp_path):
    recipe = write(tmp_path / "r.yaml", "optim:\n  lr: fast\n")
    with pytest.raises(ConfigError, match="optim.lr"):
        load_config(recipe)


def test_unknown_model_option_suggests_closest():
    with pytest.raises(ConfigError) as info:
        load_config(None, ["model.nrom=GN"])
    message = str(info.value)
    assert "model.nrom" in message
    assert "model.norm" in message.split("did you mean", 1)[1]


def test_model_option_type_checked():
    with pytest.raises(ConfigError, match="model.zero_init_residual"):
        load_config(None, ["model.zero_init_residual=maybe"])
    with pytest.raises(ConfigError, match="model.norm_groups"):
        load_config(None, ["model.norm_groups=2.5"])


def test_unknown_model_name_is_config_error():
    with pytest.raises(ConfigError, match="resnet18"):
        load_config(None, ["model.name=resnet19"])


def test_bad_choice_names_the_choices():
    with pytest.raises(ConfigError) as info:
        load_config(None, ["optim.name=rmsprop"])
    message = str(info.value)
    assert "optim.name" in message and "rmsprop" in message
    assert "sgd" in message and "adamw" in message


@pytest.mark.parametrize("override, key", [("train.epochs=0", "train.epochs"),
                                           ("data.batch_size=-1", "data.batch_size")])
def test_non_positive_counts_are_errors(override, key):
    with pytest.raises(ConfigError, match=key):
        load_config(None, [override])


def test_image_folder_needs_root():
    with pytest.raises(ConfigError, match="data.root"):
        load_config(None, ["data.name=image_folder"])


# ---------------------------------------------------------------------------------------------
# Shipped recipes and round-trips
# ---------------------------------------------------------------------------------------------

def test_quickstart_digits_loads():
    cfg = load_config(REPO / "configs/quickstart/digits.yaml")
    assert cfg.recipe == "digits"
    assert cfg.model.name == "resnet18" and cfg.model.norm == "GN"
    assert cfg.data.name == "digits" and cfg.data.image_size == 32
    assert cfg.optim.name == "adamw"
    assert cfg.optim.momentum == 0.9  # from the base recipe
    assert cfg.schedule.warmup_epochs == 1  # digits overrides base's 5


def test_quickstart_image_folder_loads_with_root(tmp_path):
    cfg = load_config(REPO / "configs/quickstart/image_folder.yaml", [f"data.root={tmp_path}"])
    assert cfg.data.name == "image_folder"
    assert cfg.data.root == str(tmp_path)
    assert cfg.model.name == "resnet50"
    assert cfg.schedule.warmup_epochs == 2


def test_quickstart_image_folder_without_root_is_an_error():
    with pytest.raises(ConfigError, match="data.root"):
        load_config(REPO / "configs/quickstart/image_folder.yaml")


@pytest.mark.parametrize("recipe", ["digits.yaml", "image_folder.yaml"])
def test_resolved_config_round_trips_through_yaml(recipe, tmp_path):
    cfg = load_config(REPO / "configs/quickstart" / recipe, [f"data.root={tmp_path}", "optim.lr=0.003"])
    text = to_yaml(cfg)
    assert "_base_" not in text
    again = OmegaConf.create(text)
    assert OmegaConf.to_container(again) == OmegaConf.to_container(cfg)
    # and the dumped file is itself a valid recipe that loads to the same config
    dumped = write(tmp_path / "resolved.yaml", text)
    reloaded = OmegaConf.to_container(load_config(dumped))
    original = OmegaConf.to_container(cfg)
    # every key of a resolved file is set explicitly, so only that record differs
    assert set(reloaded.pop("explicit_keys")) >= set(original.pop("explicit_keys"))
    assert reloaded == original
