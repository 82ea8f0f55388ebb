"""DataLoader construction: batching, skipped-sample accounting and seeded workers."""
from __future__ import annotations

import random

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler


def collate_classification(samples: list) -> dict:
    """Stack ``(image, label)`` pairs; ``None`` samples (unreadable files) are dropped and counted."""
    kept = [s for s in samples if s is not None]
    if not kept:
        return {"images": torch.empty(0), "labels": torch.empty(0, dtype=torch.long),
                "skipped": len(samples)}
    images, labels = zip(*kept)
    return {"images": torch.stack(images), "labels": torch.tensor(labels, dtype=torch.long),
            "skipped": len(samples) - len(kept)}


def collate_detection(samples: list, *, size_divisibility: int) -> dict:
    """Pad ``(image, target)`` pairs with zeros at the bottom/right to one size, a multiple of
    ``size_divisibility`` (the backbone's largest stride, as detectron2's ImageList); ``None``
    samples are dropped and counted. Masks keep their image's unpadded size [N, h, w]."""
    kept = [s for s in samples if s is not None]
    image_sizes = [tuple(image.shape[-2:]) for image, _ in kept]
    images = torch.empty(0)
    if kept:
        stride = max(size_divisibility, 1)
        height, width = (-(-max(sides) // stride) * stride for sides in zip(*image_sizes))
        images = torch.zeros((len(kept), kept[0][0].shape[0], height, width), dtype=kept[0][0].dtype)
        for padded, (image, _) in zip(images, kept):
            padded[:, :image.shape[-2], :image.shape[-1]] = image
    targets = [{key: value.as_subclass(torch.Tensor) if isinstance(value, torch.Tensor) else value
                for key, value in target.items()} for _, target in kept]
    return {"images": images, "image_sizes": image_sizes, "targets": targets, "skipped": len(samples) - len(kept)}


def seed_worker(worker_id: int) -> None:
    """Give each worker's numpy and ``random`` a seed derived from its torch seed."""
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def build_loader(dataset: Dataset, sampler: Sampler, *, batch_size: int, num_workers: int,
                 collate_fn, pin_memory: bool = False) -> DataLoader:
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers,
                      collate_fn=collate_fn, worker_init_fn=seed_worker, pin_memory=pin_memory,
                      drop_last=False, persistent_workers=False)
