"""Loading recipes: ``_base_`` inheritance, ``key=value`` overrides, and validation.

A recipe may name one or more base recipes (paths relative to itself) under ``_base_``; it is
merged on top of them. Overrides from the command line are merged last. Every key is checked
against the schema; an unknown key is an error naming the closest valid keys.
"""
from __future__ import annotations

import dataclasses
import difflib
from pathlib import Path
from typing import Any, Iterable

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from vislab.config.schema import CHOICES, Config

BASE_KEY = "_base_"
MODEL_FIXED_KEYS = ("name", "num_classes")


class ConfigError(ValueError):
    """A recipe or override that does not fit the schema."""


def schema_keys() -> list[str]:
    """Every dotted key of the schema, e.g. ``optim.lr``."""
    keys: list[str] = []

    def walk(cls: type, prefix: str) -> None:
        for f in dataclasses.fields(cls):
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            if dataclasses.is_dataclass(default):
                walk(type(default), f"{prefix}{f.name}.")
            else:
                keys.append(f"{prefix}{f.name}")

    walk(Config, "")
    return keys


def _read_yaml(path: Path, chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    if not path.is_file():
        where = f" (named as _base_ in {chain[-1]})" if chain else ""
        raise ConfigError(f"config file {path} does not exist{where}")
    if path in chain:
        raise ConfigError(f"config {path} inherits from itself through {' -> '.join(map(str, chain))}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of keys, not {type(data).__name__}")
    bases = data.pop(BASE_KEY, [])
    bases = [bases] if isinstance(bases, str) else list(bases)
    merged: dict[str, Any] = {}
    for base in bases:
        merged = _deep_merge(merged, _read_yaml((path.parent / base).resolve(), chain + (path,)))
    return _deep_merge(merged, data)


def _deep_merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def _flatten(data: dict[str, Any], prefix: str = "") -> Iterable[str]:
    """The dotted keys a (nested) config layer sets; ``model.*`` keys stay one level deep."""
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if dotted == "model":
            yield from (f"model.{k}" for k in (value or {}))
        elif isinstance(value, dict):
            yield from _flatten(value, f"{dotted}.")
        else:
            yield dotted


def _unknown_key_error(key: str, valid: list[str], source: str) -> ConfigError:
    close = difflib.get_close_matches(key, valid, n=3, cutoff=0.5)
    leaf = key.rsplit(".", 1)[-1]
    close += [k for k in valid if k.rsplit(".", 1)[-1] == leaf and k not in close]
    hint = f"; did you mean {', '.join(close[:3])}?" if close else ""
    return ConfigError(f"unknown config key {key!r} in {source}{hint}")


def _check_keys(data: dict[str, Any], source: str) -> None:
    valid = schema_keys()
    for key in _flatten(data):
        if key.startswith("model."):
            continue
        if key not in valid:
            raise _unknown_key_error(key, valid, source)


def _number_or_self(value: Any) -> Any:
    """YAML 1.1 reads ``1e-4`` (no dot) as a string; read such strings as numbers."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def parse_overrides(overrides: Iterable[str]) -> dict[str, Any]:
    """Turn ``["optim.lr=0.1", "model.norm=GN"]`` into a nested dict, values parsed as YAML."""
    nested: dict[str, Any] = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        try:
            value = _number_or_self(yaml.safe_load(raw)) if raw else None
        except yaml.YAMLError as exc:
            raise ConfigError(f"override {item!r}: cannot parse value {raw!r}: {exc}") from exc
        node = nested
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r} sets a key below a value")
        node[parts[-1]] = value
    return nested


def _check_model(cfg: DictConfig) -> None:
    from vislab.models.registry import UnknownModelError, builder_arguments, get_entry

    model = cfg.model
    if "name" not in model:
        raise ConfigError("model.name is required (see `vislab models`)")
    try:
        entry = get_entry(model.name)
    except UnknownModelError as exc:
        raise ConfigError(f"model.name: {exc}") from None
    params = builder_arguments(entry)
    for key, value in model.items():
        if key in MODEL_FIXED_KEYS:
            continue
        if key not in params:
            valid = [f"model.{k}" for k in params if k != "num_classes"]
            raise _unknown_key_error(f"model.{key}", valid, f"model {model.name}'s options")
        default = params[key].default
        if value is None and "None" in str(params[key].annotation):
            continue
        if isinstance(default, (int, float)) and isinstance(value, str):
            value = model[key] = _number_or_self(value)
        if isinstance(default, bool) and not isinstance(value, bool):
            raise ConfigError(f"model.{key} must be true or false, got {value!r}")
        if isinstance(default, (int, float)) and not isinstance(default, bool):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ConfigError(f"model.{key} must be a number, got {value!r}")
            if isinstance(default, int) and not isinstance(value, int):
                raise ConfigError(f"model.{key} must be an integer, got {value!r}")


def _check_values(cfg: DictConfig) -> None:
    for key, choices in CHOICES.items():
        value = OmegaConf.select(cfg, key)
        if value not in choices:
            raise ConfigError(f"{key}={value!r} is not one of {', '.join(choices)}")
    if cfg.data.name == "image_folder" and not cfg.data.root:
        raise ConfigError("data.name=image_folder needs data.root, a folder with one sub-folder per split")
    for key in ("data.batch_size", "train.epochs", "train.accumulate_steps", "train.eval_every",
                "train.checkpoint_every", "train.log_every"):
        if OmegaConf.select(cfg, key) < 1:
            raise ConfigError(f"{key} must be at least 1, got {OmegaConf.select(cfg, key)}")
    if not isinstance(cfg.resume, (bool, str)):
        raise ConfigError(f"resume must be true, false, auto or a checkpoint path, got {cfg.resume!r}")
    if cfg.resume == "auto" and not cfg.output_dir:
        raise ConfigError("resume=auto needs output_dir, the folder whose latest checkpoint it continues")
    steps, minutes = cfg.train.checkpoint_every_steps, cfg.train.checkpoint_every_minutes
    if steps is not None and steps < 1:
        raise ConfigError(f"train.checkpoint_every_steps must be at least 1 (or null), got {steps}")
    if minutes is not None and not minutes > 0:
        raise ConfigError(f"train.checkpoint_every_minutes must be above 0 (or null), got {minutes}")


def load_config(path: str | Path | None, overrides: Iterable[str] = ()) -> DictConfig:
    """The resolved config of recipe ``path`` (None: the schema defaults) with ``overrides``."""
    layers: list[dict[str, Any]] = []
    if path is not None:
        data = _read_yaml(Path(path).resolve())
        _check_keys(data, str(path))
        layers.append(data)
    override_data = parse_overrides(overrides)
    _check_keys(override_data, "command-line overrides")
    layers.append(override_data)
    cfg = OmegaConf.structured(Config)
    try:
        for layer in layers:
            cfg = OmegaConf.merge(cfg, layer)
    except OmegaConfBaseException as exc:
        key = getattr(exc, "full_key", None) or "?"
        raise ConfigError(f"config key {key!r}: {str(exc).splitlines()[0]}") from None
    _check_model(cfg)
    _check_values(cfg)
    cfg.explicit_keys = sorted({key for layer in layers for key in _flatten(layer)} - {"explicit_keys"})
    if path is not None and cfg.recipe is None:
        cfg.recipe = Path(path).stem
    return cfg


def to_yaml(cfg: DictConfig) -> str:
    return OmegaConf.to_yaml(cfg)


def model_kwargs(cfg: DictConfig) -> dict[str, Any]:
    """The ``create_model`` keyword overrides in ``cfg.model`` (everything but name/num_classes)."""
    model = OmegaConf.to_container(cfg.model, resolve=True)
    return {k: v for k, v in model.items() if k not in MODEL_FIXED_KEYS}


