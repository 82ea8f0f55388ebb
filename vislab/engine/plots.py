"""Training curves from ``metrics.jsonl`` (matplotlib, no display needed)."""
from __future__ import annotations

import json
from pathlib import Path


def plot_curves(metrics_path: Path, out_path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = [json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip()]
    train = [r for r in records if "loss" in r]
    evals = [r for r in records if any(k.startswith(("val/", "val_ema/")) for k in r)]
    eval_keys = sorted({k for r in evals for k in r if k.startswith(("val/", "val_ema/"))})
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    axes[0].plot([r["epoch"] for r in train], [r["loss"] for r in train])
    axes[0].set(xlabel="epoch", ylabel="training loss", title="loss")
    axes[0].grid(alpha=0.3)
    for key in eval_keys:
        points = [(r["epoch"], r[key]) for r in evals if key in r]
        axes[1].plot(*zip(*points), marker="o", label=key)
    axes[1].set(xlabel="epoch", ylabel="metric", title="evaluation")
    axes[1].grid(alpha=0.3)
    if eval_keys:
        axes[1].legend()
    fig.tight_layout()
    fig.savefig(out_path, dpi=100)
    plt.close(fig)
