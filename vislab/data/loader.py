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


def pad_to_largest(tensors: list[torch.Tensor], *, multiple: int = 1) -> torch.Tensor:
    """Stack ``[..., H, W]`` tensors zero-padded at the bottom/right to the largest height and
    width, rounded up to a ``multiple``."""
    stride = max(multiple, 1)
    height, width = (-(-max(sides) // stride) * stride for sides in zip(*(t.shape[-2:] for t in tensors)))
    batch = torch.zeros((len(tensors), *tensors[0].shape[:-2], height, width), dtype=tensors[0].dtype)
    for padded, tensor in zip(batch, tensors):
        padded[..., :tensor.shape[-2], :tensor.shape[-1]] = tensor
    return batch


def collate_detection(samples: list, *, size_divisibility: int) -> dict:
    """Pad ``(image, target)`` pairs with zeros at the bottom/right to one size, a multiple of
    ``size_divisibility`` (the backbone's largest stride, as detectron2's ImageList); ``None``
    samples are dropped and counted. Masks keep their image's unpadded size [N, h, w]."""
    kept = [s for s in samples if s is not None]
    image_sizes = [tuple(image.shape[-2:]) for image, _ in kept]
    images = pad_to_largest([image for image, _ in kept], multiple=size_divisibility) if kept else torch.empty(0)
    targets = [{key: value.as_subclass(torch.Tensor) if isinstance(value, torch.Tensor) else value
                for key, value in target.items()} for _, target in kept]
    return {"images": images, "image_sizes": image_sizes, "targets": targets, "skipped": len(samples) - len(kept)}


def collate_actors(samples: list) -> dict:
    """Batch ``(clip, target)`` pairs of actor-centric detection: clips zero-padded at the
    bottom/right to one size ``[B, 3, T, H, W]``, every sample's boxes in one ``[K, 5]`` tensor
    (batch index, x1, y1, x2, y2: the RoI head's input), their multi-hot ``labels`` ``[K, C]``,
    and per box its ``keyframes`` entry and ``normalised_boxes`` row (for writing detections)."""
    kept = [s for s in samples if s is not None]
    if not kept:
        return {"clips": torch.empty(0), "boxes": torch.empty(0, 5), "labels": torch.empty(0), "keyframes": [],
                "normalised_boxes": torch.empty(0, 4), "skipped": len(samples)}
    clips = pad_to_largest([clip for clip, _ in kept])
    targets = [target for _, target in kept]
    boxes = torch.cat([torch.cat([torch.full((len(t["boxes"]), 1), float(i)), t["boxes"]], dim=1)
                       for i, t in enumerate(targets)])
    return {"clips": clips, "boxes": boxes, "labels": torch.cat([t["labels"] for t in targets]),
            "keyframes": [t["keyframe"] for t in targets for _ in range(len(t["boxes"]))],
            "normalised_boxes": torch.cat([t["normalised_boxes"] for t in targets]),
            "skipped": len(samples) - len(kept)}


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
