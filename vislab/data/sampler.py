"""Samplers that make a run independent of how many processes and workers it uses.

``TrainSampler`` shuffles once per epoch from ``(seed, epoch)`` and cuts each global batch into
one contiguous slice per process, so the union of the processes' batches equals the batch a
single process would draw. It yields ``(index, sample_seed)`` pairs; ``SeededSamples`` reseeds
the random transforms from ``sample_seed``, so each image gets the same augmentation whichever
process or worker loads it, and a resumed epoch replays exactly. An epoch resumed from a
mid-epoch checkpoint starts at its next unseen batch (``set_epoch(epoch, start_batch=)``) with
the order and sample seeds of the whole epoch.
"""
from __future__ import annotations

from typing import Iterator

import torch
from torch.utils.data import Dataset, Sampler


def _generator(*seeds: int) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(hash(tuple(seeds)) & 0x7FFF_FFFF_FFFF_FFFF)
    return g


class TrainSampler(Sampler):
    """An epoch is one pass over the data in a fresh order, or, for a set smaller than one
    global batch (few-shot transfer with BiT's batch of 512), as many passes as fill one batch."""

    def __init__(self, num_samples: int, *, batch_size: int, seed: int, rank: int = 0,
                 world_size: int = 1):
        if num_samples < 1:
            raise ValueError("the training set is empty")
        self.num_samples = num_samples
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0
        self.start_batch = 0

    def set_epoch(self, epoch: int, *, start_batch: int = 0) -> None:
        """Iterate epoch ``epoch`` from its global batch ``start_batch`` on (0: the whole epoch)."""
        if not 0 <= start_batch < self.batches_per_epoch:
            raise ValueError(f"start_batch={start_batch} is outside epoch {epoch}, which has "
                             f"{self.batches_per_epoch} batches")
        self.epoch = epoch
        self.start_batch = start_batch

    @property
    def global_batch(self) -> int:
        return self.batch_size * self.world_size

    @property
    def batches_per_epoch(self) -> int:
        return max(self.num_samples, self.global_batch) // self.global_batch

    def __len__(self) -> int:
        return (self.batches_per_epoch - self.start_batch) * self.batch_size

    def __iter__(self) -> Iterator[tuple[int, int]]:
        passes = -(-self.global_batch // self.num_samples)
        order = [i for p in range(passes)
                 for i in torch.randperm(self.num_samples, generator=_generator(self.seed, self.epoch, p)).tolist()]
        sample_seeds = torch.randint(0, 2**62, (len(order),), generator=_generator(self.seed, self.epoch, -1)).tolist()
        for b in range(self.start_batch, self.batches_per_epoch):
            start = b * self.global_batch + self.rank * self.batch_size
            for position in range(start, start + self.batch_size):
                yield order[position], sample_seeds[position]


class ShardSampler(Sampler):
    """Every ``world_size``-th index from ``rank``: a disjoint cover of the set for evaluation."""

    def __init__(self, num_samples: int, *, rank: int = 0, world_size: int = 1):
        self.indices = list(range(rank, num_samples, world_size))

    def __len__(self) -> int:
        return len(self.indices)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)


class SeededSamples(Dataset):
    """Applies ``transform`` to ``dataset[index]`` under a torch RNG seeded by the sampler.

    With ``joint`` the transform takes and returns ``(image, target)`` together (detection: a v2
    transform moves boxes and masks with the image); otherwise it takes the image alone. The
    dataset is read under the seeded RNG too, so a dataset that draws its own randomness from
    torch and transforms its own samples (video clips) is seeded with ``transform=None``.
    """

    def __init__(self, dataset: Dataset, transform, *, joint: bool = False):
        self.dataset = dataset
        self.transform = transform
        self.joint = joint

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: int | tuple[int, int]):
        index, sample_seed = key if isinstance(key, tuple) else (key, None)
        if sample_seed is None:
            return self._load(index)
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(sample_seed)
            return self._load(index)

    def _load(self, index: int):
        sample = self.dataset[index]
        if sample is None or self.transform is None:
            return sample
        image, label = sample
        if self.joint:
            return self.transform(image, label)
        return self.transform(image), label
