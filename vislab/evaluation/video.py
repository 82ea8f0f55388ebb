"""Multi-view video evaluation: clip-level and video-level top-k, and the confusion matrix.

A video is scored by averaging the softmax scores of its views (``test_clips`` clips x
``test_crops`` crops: the 30-view protocol of SlowFast/X3D at 10 x 3); clip-level accuracy scores
every view on its own.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from vislab.utils.files import atomic_path


class MultiViewAccumulator:
    """Sums of top-1/top-5 hits (video-level and per view) and the video-level confusion matrix."""

    def __init__(self, *, num_classes: int):
        self.num_classes = num_classes
        self.hits = torch.zeros(5, dtype=torch.float64)  # top1, top5, clip_top1, videos, views
        self.confusion = torch.zeros(num_classes, num_classes, dtype=torch.float64)

    def update(self, view_logits: torch.Tensor, labels: torch.Tensor) -> None:
        """``view_logits`` [B, V, C] of B videos with V views each; ``labels`` [B]."""
        probs = view_logits.float().softmax(dim=-1)
        video = probs.mean(dim=1)
        top5 = video.topk(min(5, self.num_classes), dim=1).indices
        predicted = top5[:, 0]
        view_hits = (probs.argmax(dim=-1) == labels[:, None]).sum()
        self.hits += torch.tensor([(predicted == labels).sum().item(), (top5 == labels[:, None]).any(dim=1).sum().item(),
                                   view_hits.item(), len(labels), probs.shape[0] * probs.shape[1]], dtype=torch.float64)
        self.confusion.index_put_((labels.cpu(), predicted.cpu()), torch.ones(len(labels), dtype=torch.float64),
                                  accumulate=True)

    def state(self) -> torch.Tensor:
        return torch.cat((self.hits, self.confusion.flatten()))

    def result(self, state: torch.Tensor) -> tuple[dict[str, float], torch.Tensor]:
        """Metrics (fractions) and the confusion matrix of a (summed) ``state``."""
        top1, top5, clip_top1, videos, views = state[:5].tolist()
        metrics = {"top1": top1 / max(videos, 1), "top5": top5 / max(videos, 1), "clip_top1": clip_top1 / max(views, 1)}
        return metrics, state[5:].view(self.num_classes, self.num_classes)


def save_confusion_matrix(confusion: torch.Tensor, *, class_names: Sequence[str], path: Path) -> None:
    """Rows: true class; columns: predicted class; cells: share of the row's videos."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rates = confusion / confusion.sum(dim=1, keepdim=True).clamp(min=1)
    side = max(4.0, 0.45 * len(class_names) + 2)
    fig, ax = plt.subplots(figsize=(side, side))
    ax.imshow(rates.numpy(), cmap="Blues", vmin=0, vmax=1)
    ticks = range(len(class_names))
    ax.set_xticks(ticks, class_names, rotation=90)
    ax.set_yticks(ticks, class_names)
    ax.set(xlabel="predicted", ylabel="true", title="video-level confusion")
    if len(class_names) <= 20:
        for (row, col), value in zip(((r, c) for r in ticks for c in ticks), rates.flatten().tolist()):
            if value > 0:
                ax.text(col, row, f"{value:.2f}", ha="center", va="center", fontsize=7,
                        color="white" if value > 0.5 else "black")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
