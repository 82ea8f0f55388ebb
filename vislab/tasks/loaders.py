"""The training and evaluation loaders every task builds the same way from ``cfg.data``."""
from __future__ import annotations

import torch
from omegaconf import DictConfig
from torch.utils.data import DataLoader, Dataset

from vislab.data.loader import build_loader, collate_classification
from vislab.data.sampler import SeededSamples, ShardSampler, TrainSampler
from vislab.engine.distributed import DistInfo


def train_loader(dataset: Dataset, transform, *, cfg: DictConfig, dist: DistInfo,
                 collate_fn=collate_classification, joint: bool = False) -> tuple[DataLoader, TrainSampler]:
    """This process's share of each global batch, every sample augmented under its own seed."""
    d = cfg.data
    sampler = TrainSampler(len(dataset), batch_size=d.batch_size, seed=cfg.train.seed, rank=dist.rank,
                           world_size=dist.world_size)
    loader = build_loader(SeededSamples(dataset, transform, joint=joint), sampler, batch_size=d.batch_size,
                          num_workers=d.num_workers, collate_fn=collate_fn, pin_memory=torch.cuda.is_available())
    return loader, sampler


def val_loader(dataset: Dataset, transform, *, cfg: DictConfig, dist: DistInfo,
               collate_fn=collate_classification, joint: bool = False) -> DataLoader:
    """This process's shard of the evaluation set, whose files (if the dataset can check them,
    ``check_files``) are checked first."""
    d = cfg.data
    check_files = getattr(dataset, "check_files", None)
    if check_files is not None:
        check_files()
    sampler = ShardSampler(len(dataset), rank=dist.rank, world_size=dist.world_size)
    return build_loader(SeededSamples(dataset, transform, joint=joint), sampler, batch_size=d.batch_size,
                        num_workers=d.num_workers, collate_fn=collate_fn, pin_memory=torch.cuda.is_available())
