"""A k-nearest-neighbour monitor of representation quality during self-supervised training.

Each validation feature votes with its ``k`` most cosine-similar labelled training features,
weighted by ``exp(similarity / temperature)`` (Wu et al., 2018, section 3.4; the monitor of the
MoCo CIFAR demo), so pre-training can keep its best checkpoint without training a classifier.
"""
from __future__ import annotations

import torch
from torch.nn import functional as F


def knn_predict(*, bank: torch.Tensor, bank_labels: torch.Tensor, queries: torch.Tensor, num_classes: int,
                k: int = 20, temperature: float = 0.07) -> torch.Tensor:
    """Predicted class of each query; ``bank`` and ``queries`` are L2-normalised features."""
    similarity = queries @ bank.T
    top_sim, top_index = similarity.topk(min(k, bank.shape[0]), dim=1)
    votes = F.one_hot(bank_labels[top_index], num_classes).float() * (top_sim / temperature).exp()[..., None]
    return votes.sum(dim=1).argmax(dim=1)
