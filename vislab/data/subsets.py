"""Fixed subsets of a dataset: the same images in every run, and a smaller subset always inside a
larger one, as data-scaling studies need (Sun et al., 2017, section 5.1)."""
from __future__ import annotations

import torch
from torch.utils.data import Dataset, Subset


def fixed_order(n: int) -> list[int]:
    """One permutation of the dataset, the same in every run, that subsets are cut from."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(0)).tolist()


def subset_of(dataset: Dataset, indices: list[int]) -> Dataset:
    """``dataset`` restricted to ``indices`` (in dataset order), keeping its classes (and labels)."""
    subset = Subset(dataset, sorted(indices))
    subset.classes = dataset.classes
    if hasattr(dataset, "labels"):
        subset.labels = [dataset.labels[i] for i in subset.indices]
    return subset


def limit(dataset: Dataset, max_samples: int | None) -> Dataset:
    """A fixed subset of ``max_samples``: the first of one fixed permutation."""
    if max_samples is None or max_samples >= len(dataset):
        return dataset
    return subset_of(dataset, fixed_order(len(dataset))[:max_samples])
