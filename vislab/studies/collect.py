"""A study's results: each finished member's metrics read from its last run, ``study.csv`` (one row
per member and seed) and the Markdown table (mean ± std over seeds per combination of the axes)."""
from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vislab.studies.runner import member_finished, stage_folders
from vislab.studies.spec import Metric, Study, format_label
from vislab.utils.files import atomic_write_text


@dataclass
class Row:
    labels: dict[str, Any]
    seed: int
    values: dict[str, float]  # metric name -> value
    seconds: float


@dataclass
class Group:
    """One combination of the axes, its seeds pooled."""
    labels: dict[str, Any]
    mean: dict[str, float]
    std: dict[str, float]  # 0 with one seed
    count: int


def _metric_value(records: list[dict], metric: Metric) -> float | None:
    values = [r[metric.key] for r in records if isinstance(r.get(metric.key), (int, float))]
    if not values:
        return None
    raw = {"last": values[-1], "max": max(values), "min": min(values)}[metric.reduce]
    return metric.of(raw)


def read_rows(study: Study, study_dir: Path) -> list[Row]:
    """The finished members' rows (a member is finished when all its stages are)."""
    rows = []
    for member in study.members:
        if not member_finished(study_dir, member):
            continue
        folders = stage_folders(study_dir, member)
        last = folders[member.stages[-1].name]
        records = [json.loads(line) for line in (last / "metrics.jsonl").read_text().splitlines() if line.strip()]
        values = {m.name: _metric_value(records, m) for m in study.metrics}
        seconds = sum(json.loads((folders[s.name] / "summary.json").read_text()).get("seconds", 0.0)
                      for s in member.stages)
        rows.append(Row(labels=member.labels, seed=member.seed,
                        values={k: v for k, v in values.items() if v is not None}, seconds=seconds))
    return rows


def group_rows(study: Study, rows: list[Row]) -> list[Group]:
    """Rows pooled over seeds, in the study's member order."""
    order: dict[tuple, list[Row]] = {}
    for row in rows:
        order.setdefault(tuple(row.labels[a] for a in study.axes), []).append(row)
    groups = []
    for key, members in order.items():
        mean, std = {}, {}
        for metric in study.metrics:
            values = [r.values[metric.name] for r in members if metric.name in r.values]
            if not values:
                continue
            mean[metric.name] = sum(values) / len(values)
            spread = sum((v - mean[metric.name]) ** 2 for v in values) / (len(values) - 1) if len(values) > 1 else 0.0
            std[metric.name] = math.sqrt(spread)
        groups.append(Group(labels=dict(zip(study.axes, key)), mean=mean, std=std, count=len(members)))
    return groups


def write_csv(study: Study, rows: list[Row], path: Path) -> None:
    names = [m.name for m in study.metrics]
    lines: list[list[Any]] = [[*study.axes, "seed", *names, "seconds"]]
    for row in rows:
        lines.append([*(row.labels[a] for a in study.axes), row.seed,
                      *(row.values.get(n, "") for n in names), round(row.seconds, 1)])
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(lines)
    atomic_write_text(path, buffer.getvalue())


def _cell(group: Group, name: str) -> str:
    if name not in group.mean:
        return "-"
    if group.count > 1:
        return f"{group.mean[name]:.2f} ± {group.std[name]:.2f}"
    return f"{group.mean[name]:.2f}"


def markdown_table(study: Study, groups: list[Group]) -> str:
    names = [m.name for m in study.metrics]
    header = [*study.axes, *names, "seeds"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for group in groups:
        cells = [*(format_label(group.labels[a]) for a in study.axes), *(_cell(group, n) for n in names),
                 str(group.count)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
