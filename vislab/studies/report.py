"""A study's report in its folder: ``study.csv``, ``study.md`` (the table, the fits, the failures),
``fits.json`` and ``study.png`` (the metric against the swept axis, one line per variant)."""
from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from vislab.studies.collect import Group, group_rows, markdown_table, read_rows, write_csv
from vislab.studies.fits import FIT_KINDS, Fit, fit_curve
from vislab.studies.runner import MemberResult
from vislab.studies.spec import Study, format_label
from vislab.utils.files import atomic_path, atomic_write_text


def _series(study: Study, groups: list[Group], spec: dict[str, Any]) -> dict[str, list[tuple[float, float, float]]]:
    """(x, mean, std) points per line, from the groups that have the metric."""
    series: dict[str, list[tuple[float, float, float]]] = {}
    others = [a for a in study.axes if a not in (spec["x"], spec.get("lines"))]
    for group in groups:
        if spec["y"] not in group.mean:
            continue
        parts = [f"{spec['lines']}={format_label(group.labels[spec['lines']])}"] if spec.get("lines") else []
        parts += [f"{a}={format_label(group.labels[a])}" for a in others]
        series.setdefault(", ".join(parts) or spec["y"], []).append(
            (float(group.labels[spec["x"]]), group.mean[spec["y"]], group.std[spec["y"]]))
    return {name: sorted(points) for name, points in series.items()}


def draw_plot(study: Study, groups: list[Group], path: Path, *, fits: dict[str, list[Fit]] | None = None) -> None:
    """The metric against the swept axis, one line per variant; fitted curves dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    spec = study.plot
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for name, points in _series(study, groups, spec).items():
        xs, means, stds = zip(*points)
        line = ax.errorbar(xs, means, yerr=stds if any(stds) else None, marker="o", capsize=3, label=name)
        for fit, style in zip((fits or {}).get(name, []), ("--", ":")):
            grid = np.geomspace(min(xs), max(xs), 100)
            ax.plot(grid, fit.predict(grid), style, color=line[0].get_color(), alpha=0.7,
                    label=f"{name}: {fit.kind.replace('_', '-')} fit (R² {fit.r2:.2f})")
    from matplotlib.ticker import LogLocator, NullFormatter, ScalarFormatter

    for axis, log in ((ax.xaxis, spec.get("log_x")), (ax.yaxis, spec.get("log_y"))):
        if log:  # plain numbers at 1, 2, 5 x 10^k rather than powers of ten
            (ax.set_xscale if axis is ax.xaxis else ax.set_yscale)("log")
            axis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
            axis.set_major_formatter(ScalarFormatter())
            axis.set_minor_formatter(NullFormatter())
    ax.set(xlabel=spec["x"], ylabel=spec["y"], title=study.name)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)


def compute_fits(study: Study, groups: list[Group]) -> tuple[dict[str, list[Fit]], list[str]]:
    """Every fit kind on every line; the fits that fail are named, not dropped silently."""
    fits: dict[str, list[Fit]] = {}
    problems = []
    for name, points in _series(study, groups, study.fits).items():
        xs, means, _ = zip(*points)
        for kind in FIT_KINDS:
            try:
                fits.setdefault(name, []).append(fit_curve(kind, list(xs), list(means)))
            except (ValueError, RuntimeError) as exc:
                problems.append(f"{name}: {kind} not fitted: {exc}")
    return fits, problems


def _fits_markdown(fits: dict[str, list[Fit]]) -> str:
    lines = ["| line | fit | R² | largest N | predicted from the rest | error |", "|---|---|---|---|---|---|"]
    for name, items in fits.items():
        for fit in items:
            held = ("-", "-", "-") if fit.held_out_x is None else (
                f"{fit.held_out_x:g}", f"{fit.held_out_prediction:.2f}", f"{fit.held_out_error:+.2f}")
            lines.append(f"| {name} | {fit.formula()} | {fit.r2:.3f} | {' | '.join(held)} |")
    return "\n".join(lines)


def write_report(study: Study, study_dir: Path, results: list[MemberResult] | None = None) -> str:
    """Write the report files from whatever members have finished; returns the Markdown."""
    rows = read_rows(study, study_dir)
    groups = group_rows(study, rows)
    write_csv(study, rows, study_dir / "study.csv")
    parts = [f"# Study: {study.name}", study.description.strip(),
             f"{len(rows)} of {len(study.members)} members finished.", markdown_table(study, groups)]
    fits: dict[str, list[Fit]] = {}
    if study.fits and groups:
        fits, problems = compute_fits(study, groups)
        atomic_write_text(study_dir / "fits.json", json.dumps(
            {name: [asdict(f) for f in items] for name, items in fits.items()}, indent=2))
        parts += [f"Fits of {study.fits['y']} against {study.fits['x']}:", _fits_markdown(fits), *problems]
    if study.plot and groups:
        same_axes = study.fits and (study.fits["x"], study.fits["y"]) == (study.plot["x"], study.plot["y"])
        draw_plot(study, groups, study_dir / "study.png", fits=fits if same_axes else None)
        parts.insert(4, "![study](study.png)")
    missing = [m.key for m in study.metrics if rows and not any(m.name in r.values for r in rows)]
    if missing:
        parts.append(f"No finished run logged {', '.join(missing)}: check the metric keys against the runs' "
                     f"metrics.jsonl.")
    failed = [r for r in results or [] if r.status == "failed"]
    if failed:
        parts.append("Failed members:\n" + "\n".join(f"- {r.member.name}: see {r.folder / 'log.txt'}" for r in failed))
    text = "\n\n".join(p for p in parts if p) + "\n"
    atomic_write_text(study_dir / "study.md", text)
    return text
