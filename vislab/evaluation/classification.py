"""Top-k accuracy, summed across processes."""
from __future__ import annotations

from typing import Sequence

import torch


def topk_correct(logits: torch.Tensor, labels: torch.Tensor, ks: Sequence[int]) -> torch.Tensor:
    """How many rows have their label among the ``k`` highest logits, for each ``k``."""
    top = logits.topk(max(ks), dim=1).indices
    hits = top.eq(labels.view(-1, 1))
    return torch.stack([hits[:, :k].any(dim=1).sum() for k in ks])


class TopKAccumulator:
    """Accumulates top-k hits over batches; ``k`` larger than the class count is clipped."""

    def __init__(self, *, num_classes: int, ks: Sequence[int] = (1, 5)):
        self.ks = [min(k, num_classes) for k in ks]
        self.names = [f"top{k}" for k in ks]
        self.hits = torch.zeros(len(ks), dtype=torch.float64)
        self.count = 0

    def update(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        self.hits += topk_correct(logits.float(), labels, self.ks).cpu().double()
        self.count += labels.numel()

    def state(self) -> torch.Tensor:
        """Hits followed by the count, for one all-reduce."""
        return torch.cat([self.hits, torch.tensor([float(self.count)], dtype=torch.float64)])

    @staticmethod
    def result(names: Sequence[str], state: torch.Tensor) -> dict[str, float]:
        count = max(float(state[-1]), 1.0)
        return {name: float(state[i]) / count for i, name in enumerate(names)}
