"""Assigning predictions (anchors, proposals) to ground-truth boxes by IoU."""
from __future__ import annotations

from typing import Sequence

import torch

IGNORE, NEGATIVE, POSITIVE = -1, 0, 1


class Matcher:
    """Each column (a prediction) gets its best-overlapping row (a ground-truth box) and a label:
    IoU below ``thresholds[0]`` is negative, between the two ignored, at or above ``thresholds[1]``
    positive. ``allow_low_quality`` also makes positive, for every ground-truth box, the
    predictions it overlaps most (ties included), so no box goes unmatched (Faster R-CNN section
    3.1.2, condition (i))."""

    def __init__(self, *, thresholds: Sequence[float], allow_low_quality: bool):
        low, high = thresholds
        if low > high:
            raise ValueError(f"matcher thresholds must be ordered, got {list(thresholds)}")
        self.low, self.high = float(low), float(high)
        self.allow_low_quality = allow_low_quality

    def __call__(self, iou: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``iou`` is [G, P]; returns the matched row per column and the column labels."""
        if iou.numel() == 0:
            columns = iou.shape[1]
            return (iou.new_zeros(columns, dtype=torch.int64),
                    iou.new_full((columns,), NEGATIVE, dtype=torch.int8))
        best_iou, matches = iou.max(dim=0)
        labels = torch.full_like(matches, POSITIVE, dtype=torch.int8)
        labels[best_iou < self.high] = IGNORE
        labels[best_iou < self.low] = NEGATIVE
        if self.allow_low_quality:
            best_per_row, _ = iou.max(dim=1)
            best = (iou == best_per_row[:, None]) & (best_per_row[:, None] > 0)
            _, columns = torch.nonzero(best, as_tuple=True)
            labels[columns] = POSITIVE
        return matches, labels


def sample_labels(labels: torch.Tensor, *, num_samples: int, positive_fraction: float,
                  generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices of at most ``num_samples`` labelled entries, up to ``positive_fraction`` of them
    positive (label >= 1) and the rest negative (label 0), drawn uniformly; -1 is never drawn.
    The balanced minibatch of Faster R-CNN section 3.1.3 (RPN) and Fast R-CNN section 2.3."""
    positive = torch.nonzero(labels >= 1).squeeze(1)
    negative = torch.nonzero(labels == 0).squeeze(1)
    num_pos = min(positive.numel(), int(num_samples * positive_fraction))
    num_neg = min(negative.numel(), num_samples - num_pos)
    pick_pos = torch.randperm(positive.numel(), device=labels.device, generator=generator)[:num_pos]
    pick_neg = torch.randperm(negative.numel(), device=labels.device, generator=generator)[:num_neg]
    return positive[pick_pos], negative[pick_neg]
