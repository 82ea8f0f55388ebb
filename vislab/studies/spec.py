"""The study file: a base recipe (or a chain of stages), axes swept as a grid, seeds, the metrics to
collect, and optionally a plot and fits. ``load_study`` validates it and expands its members.

A study file (paths relative to the file)::

    name: gn_vs_bn_batch
    recipe: ../quickstart/digits_resnet20.yaml     # or stages: [{name, recipe, overrides}, ...]
    overrides: [train.epochs=8]                    # every member
    axes:                                          # the grid: every combination, in this order
      norm: {key: model.norm, values: [BN, GN]}    # a value sets one key...
      batch:
        values:                                    # ...or a mapping sets several, under a label
          - {label: 32, set: {data.batch_size: 32, optim.lr: 0.1}}
          - {label: 2, set: {data.batch_size: 2, optim.lr: 0.00625}}
    seeds: [0, 1]                                  # train.seed of each repeat
    metrics:                                       # read from the last stage's evaluations
      - val/top1
      - {key: val/top1, name: error, scale: -100, offset: 100}
    plot: {x: batch, y: error, lines: norm, log_x: true}
    fits: {x: batch, y: error}                     # log-linear and saturating power law

With several stages, an axis sets its keys in the last stage unless it names one (``stage:``);
a later stage refers to an earlier stage's run folder as ``{stage_name}`` in its overrides
(OmegaConf's ``${...}`` interpolations are left alone). A stage
marked ``shared: true`` (a pre-training that several members start from) runs once for all members
that give it the same recipe and overrides.
"""
from __future__ import annotations

import itertools
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from vislab.config import ConfigError, load_config

TOP_KEYS = {"name", "description", "recipe", "overrides", "stages", "axes", "seeds", "metrics", "plot",
            "fits"}
AXIS_KEYS = {"key", "values", "stage"}
VALUE_KEYS = {"label", "set"}
STAGE_KEYS = {"name", "recipe", "overrides", "shared"}
METRIC_KEYS = {"key", "name", "scale", "offset", "reduce"}
PLOT_KEYS = {"x", "y", "lines", "log_x", "log_y"}
FIT_KEYS = {"x", "y", "lines"}
REDUCTIONS = ("last", "max", "min")
NAME_PATTERN = r"[A-Za-z0-9_.+-]+"  # study and axis names: they name folders
REFERENCE = r"(?<![$\w{])\{([A-Za-z_][A-Za-z0-9_]*)\}"  # {stage}; not OmegaConf's ${...} nor {{...}}


class StudyError(ConfigError):
    """A malformed study file; the message names the file and the key."""


@dataclass(frozen=True)
class Stage:
    name: str
    recipe: Path
    overrides: tuple[str, ...]
    shared: bool = False  # members whose stage has the same recipe and overrides share one run


@dataclass(frozen=True)
class Metric:
    key: str  # as the run's metrics.jsonl writes it, e.g. val/top1
    name: str  # the column in the study's table
    scale: float = 1.0
    offset: float = 0.0
    reduce: str = "last"  # over the run's evaluations: the last value, or the best (max / min)

    def of(self, raw: float) -> float:
        return self.offset + self.scale * raw


@dataclass(frozen=True)
class Member:
    """One run of the study (a chain of runs with several stages): its folder name, its labels on
    each axis, its seed and each stage's overrides (``{stage}`` references still unresolved)."""
    name: str
    labels: dict[str, Any]
    seed: int
    stages: tuple[Stage, ...]


@dataclass(frozen=True)
class Study:
    path: Path
    name: str
    description: str
    axes: tuple[str, ...]
    seeds: tuple[int, ...]
    metrics: tuple[Metric, ...]
    members: tuple[Member, ...]
    plot: dict[str, Any] = field(default_factory=dict)
    fits: dict[str, Any] = field(default_factory=dict)


def _expect(value: Any, kind: type | tuple[type, ...], where: str, what: str) -> Any:
    if not isinstance(value, kind):
        raise StudyError(f"{where} must be {what}, got {value!r}")
    return value


def _check_keys(mapping: dict, allowed: set[str], where: str) -> None:
    unknown = sorted(set(mapping) - allowed)
    if unknown:
        raise StudyError(f"{where}: unknown key {unknown[0]!r} (allowed: {', '.join(sorted(allowed))})")


def _format_override(key: str, value: Any) -> str:
    return f"{key}={format_label(value)}"


def format_label(label: Any) -> str:
    """A label as the study file writes it (``true``, not ``True``)."""
    return yaml.safe_dump(label, default_flow_style=True).strip().removesuffix("...").strip()


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.+-]+", "-", text).strip("-") or "x"


def _read_stages(data: dict, folder: Path, where: str) -> list[Stage]:
    if ("stages" in data) == ("recipe" in data):
        raise StudyError(f"{where}: give either recipe (one run per member) or stages (a chain), not "
                         f"{'both' if 'stages' in data else 'neither'}")
    shared = tuple(_expect(data.get("overrides", []), list, f"{where}: overrides", "a list of key=value"))
    raw_stages = (_expect(data["stages"], list, f"{where}: stages", "a list") if "stages" in data
                  else [{"name": "run", "recipe": data["recipe"]}])
    stages = []
    for index, raw in enumerate(raw_stages):
        at = f"{where}: stages[{index}]"
        _expect(raw, dict, at, "a mapping")
        _check_keys(raw, STAGE_KEYS, at)
        for key in ("name", "recipe"):
            if key not in raw:
                raise StudyError(f"{at}: {key} is required")
        recipe = Path(os.path.normpath(folder / _expect(raw["recipe"], str, f"{at}.recipe", "a path")))
        if not recipe.is_file():
            raise StudyError(f"{at}.recipe: {recipe} does not exist")
        own = tuple(_expect(raw.get("overrides", []), list, f"{at}.overrides", "a list of key=value"))
        stages.append(Stage(name=str(raw["name"]), recipe=recipe, overrides=tuple(map(str, shared + own)),
                            shared=bool(_expect(raw.get("shared", False), bool, f"{at}.shared", "true or false"))))
    names = [s.name for s in stages]
    if len(set(names)) != len(names):
        raise StudyError(f"{where}: stage names must differ, got {names}")
    for index, stage in enumerate(stages):
        own = {s.name for s in stages[:index] if not s.shared}
        refers = {m for o in stage.overrides for m in re.findall(REFERENCE, o)}
        if stage.shared and refers & own:
            raise StudyError(f"{where}: stages[{index}] is shared but refers to {{{sorted(refers & own)[0]}}}, "
                             f"a stage each member runs on its own")
    return stages


def _read_axes(data: dict, stage_names: list[str], where: str) -> dict[str, list[tuple[Any, str, list[str]]]]:
    """Each axis as (label, stage, overrides) per value."""
    axes = {}
    for axis, spec in _expect(data.get("axes", {}), dict, f"{where}: axes", "a mapping").items():
        at = f"{where}: axes.{axis}"
        if not re.fullmatch(NAME_PATTERN, str(axis)):
            raise StudyError(f"{at}: an axis name may hold letters, digits, '_', '.', '+' and '-' only")
        _expect(spec, dict, at, "a mapping with values (and key, stage)")
        _check_keys(spec, AXIS_KEYS, at)
        stage = spec.get("stage", stage_names[-1])
        if stage not in stage_names:
            raise StudyError(f"{at}.stage: {stage!r} is not a stage (stages: {', '.join(stage_names)})")
        values = _expect(spec.get("values"), list, f"{at}.values", "a non-empty list")
        if not values:
            raise StudyError(f"{at}.values must be a non-empty list")
        entries = []
        for index, value in enumerate(values):
            if isinstance(value, dict):
                _check_keys(value, VALUE_KEYS, f"{at}.values[{index}]")
                settings = _expect(value.get("set"), dict, f"{at}.values[{index}].set", "a mapping of key: value")
                label = value.get("label", index)
                entries.append((label, stage, [_format_override(k, v) for k, v in settings.items()]))
            elif "key" in spec:
                entries.append((value, stage, [_format_override(spec["key"], value)]))
            else:
                raise StudyError(f"{at}: a plain value ({value!r}) needs the axis's key")
            _expect(entries[-1][0], (str, int, float, bool, type(None)), f"{at}.values[{index}]'s label",
                    "a string or a number")
        axes[str(axis)] = entries
    return axes


def _read_metrics(data: dict, where: str) -> list[Metric]:
    raw = _expect(data.get("metrics"), list, f"{where}: metrics", "a non-empty list")
    metrics = []
    for index, item in enumerate(raw):
        at = f"{where}: metrics[{index}]"
        if isinstance(item, str):
            item = {"key": item}
        _expect(item, dict, at, "a key or a mapping")
        _check_keys(item, METRIC_KEYS, at)
        if "key" not in item:
            raise StudyError(f"{at}: key is required")
        if item.get("reduce", "last") not in REDUCTIONS:
            raise StudyError(f"{at}.reduce must be one of {', '.join(REDUCTIONS)}, got {item['reduce']!r}")
        for number in ("scale", "offset"):
            if number in item:
                _expect(item[number], (int, float), f"{at}.{number}", "a number")
        metrics.append(Metric(key=item["key"], name=item.get("name", item["key"]),
                              scale=float(item.get("scale", 1.0)), offset=float(item.get("offset", 0.0)),
                              reduce=item.get("reduce", "last")))
    if not metrics:
        raise StudyError(f"{where}: metrics must be a non-empty list")
    return metrics


def _read_figure(data: dict, key: str, allowed: set[str], axes: dict[str, list], metrics: list[str],
                 where: str) -> dict[str, Any]:
    spec = _expect(data.get(key, {}), dict, f"{where}: {key}", "a mapping")
    if not spec:
        return {}
    _check_keys(spec, allowed, f"{where}: {key}")
    for part, choices in (("x", axes), ("y", metrics), ("lines", axes)):
        if part in spec and spec[part] not in choices:
            raise StudyError(f"{where}: {key}.{part}={spec[part]!r} is not one of {', '.join(choices)}")
    for part in ("x", "y"):
        if part not in spec:
            raise StudyError(f"{where}: {key}.{part} is required")
    labels = [label for label, _, _ in axes[spec["x"]]]
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in labels):
        raise StudyError(f"{where}: {key}.x={spec['x']!r} needs numeric labels, got {labels}")
    return spec


def _expand(stages: list[Stage], axes: dict[str, list], seeds: list[int], where: str) -> list[Member]:
    """Every combination of the axes' values, once per seed; two members with one folder name
    (labels that differ only in punctuation) are an error."""
    members: dict[str, Member] = {}
    for combo in itertools.product(*axes.values()) if axes else [()]:
        for seed in seeds:
            labels = {axis: label for axis, (label, _, _) in zip(axes, combo)}
            member_stages = tuple(
                Stage(name=s.name, recipe=s.recipe, shared=s.shared,
                      overrides=s.overrides + tuple(o for _, stage, ovr in combo if stage == s.name for o in ovr)
                      + (f"train.seed={seed}",))
                for s in stages)
            slug = "_".join([*(f"{axis}-{_slug(format_label(label))}" for axis, label in labels.items()),
                             f"seed{seed}"])
            if slug in members:
                raise StudyError(f"{where}: labels {members[slug].labels} and {labels} give one folder name "
                                 f"({slug}); make the labels differ in letters or digits")
            members[slug] = Member(name=slug, labels=labels, seed=seed, stages=member_stages)
    return list(members.values())


def load_study(path: str | Path) -> Study:
    """Read and validate a study file; every member's config is loaded once, so a bad override
    is reported before anything runs."""
    path = Path(path)
    where = str(path)
    if not path.is_file():
        raise StudyError(f"study file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise StudyError(f"study file {path} is not valid YAML: {exc}") from None
    _expect(data, dict, where, "a mapping of keys")
    _check_keys(data, TOP_KEYS, where)
    stages = _read_stages(data, path.parent, where)
    axes = _read_axes(data, [s.name for s in stages], where)
    seeds = _expect(data.get("seeds", [0]), list, f"{where}: seeds", "a non-empty list of integers")
    if not seeds or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds) or len(set(seeds)) < len(seeds):
        raise StudyError(f"{where}: seeds must be a non-empty list of different integers, got {seeds}")
    metrics = _read_metrics(data, where)
    names = [m.name for m in metrics]
    plot = _read_figure(data, "plot", PLOT_KEYS, axes, names, where)
    fits = _read_figure(data, "fits", FIT_KEYS, axes, names, where)
    name = str(data.get("name", path.stem))
    if not re.fullmatch(NAME_PATTERN, name):
        raise StudyError(f"{where}: name {name!r} names the study's folder: letters, digits, '_', '.', '+', '-'")
    members = _expand(stages, axes, seeds, where)
    for member in members:
        for index, stage in enumerate(member.stages):
            earlier = {s.name: "." for s in member.stages[:index]}
            try:
                load_config(stage.recipe, [resolve_stage_references(o, earlier) for o in stage.overrides])
            except ConfigError as exc:
                raise StudyError(f"{where}: member {member.name}, stage {stage.name}: {exc}") from None
    return Study(path=path, name=name, description=str(data.get("description", "")),
                 axes=tuple(axes), seeds=tuple(seeds), metrics=tuple(metrics), members=tuple(members),
                 plot=plot, fits=fits)


def resolve_stage_references(override: str, run_dirs: dict[str, str]) -> str:
    """``{stage}`` in an override replaced by that stage's run folder."""
    def replace(match: re.Match) -> str:
        name = match.group(1)
        if name not in run_dirs:
            raise StudyError(f"override {override!r} refers to {{{name}}}, which is not an earlier stage")
        return run_dirs[name]
    return re.sub(REFERENCE, replace, override)
