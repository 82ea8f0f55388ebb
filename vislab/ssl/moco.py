"""MoCo v1 (He et al., 2020) and v2 (Chen et al., 2020): contrast each query with its key and a
queue of keys from earlier batches, all keys coming from a momentum-updated copy of the encoder.

The layout follows the official ``moco/builder.py``: the key encoder starts as a copy of the
query encoder and follows it by ``theta_k <- m theta_k + (1 - m) theta_q`` (eq. 2); the loss is
InfoNCE over one positive and the queue's negatives (eq. 1); the keys of the whole (global) batch
replace the oldest entries of the queue after the loss is computed.
"""
from __future__ import annotations

import copy

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from vislab.ssl.gather import concat_all_gather, rank, world_size


def momentum_copy(module: nn.Module) -> nn.Module:
    """A copy of ``module`` that only ever follows it by momentum (no gradient)."""
    follower = copy.deepcopy(module)
    follower.requires_grad_(False)
    return follower


@torch.no_grad()
def momentum_update(*, online: nn.Module, target: nn.Module, momentum: float) -> None:
    """``target <- momentum * target + (1 - momentum) * online`` for every parameter (MoCo eq. 2);
    buffers such as BatchNorm's running statistics are the target's own."""
    for online_param, target_param in zip(online.parameters(), target.parameters(), strict=True):
        target_param.mul_(momentum).add_(online_param.detach(), alpha=1.0 - momentum)


def info_nce_loss(*, queries: torch.Tensor, keys: torch.Tensor, negatives: torch.Tensor,
                  temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """InfoNCE (MoCo eq. 1) of L2-normalised ``queries`` (N, C) against their positive ``keys``
    (N, C) and the shared ``negatives`` (K, C): cross-entropy of ``[q.k+, q.k-...] / T`` with the
    positive at index 0. Returns the loss and the logits (N, 1 + K)."""
    positive = (queries * keys).sum(dim=1, keepdim=True)
    negative = queries @ negatives.T
    logits = torch.cat([positive, negative], dim=1) / temperature
    labels = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)
    return F.cross_entropy(logits, labels), logits


@torch.no_grad()
def shuffle_across_processes(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """This process's slice of the global batch in an order drawn on rank 0 and broadcast, and
    that order (the official ``_batch_shuffle_ddp``): each process's key encoder then sees images
    whose queries other processes encode, so its BatchNorm statistics carry nothing of the pair."""
    gathered = concat_all_gather(images)
    order = torch.randperm(gathered.shape[0], device=images.device)
    dist.broadcast(order, src=0)
    return gathered[order.view(world_size(), -1)[rank()]], order


@torch.no_grad()
def unshuffle_across_processes(keys: torch.Tensor, *, order: torch.Tensor) -> torch.Tensor:
    """This process's keys back in the order of its own images (undoes ``shuffle_across_processes``)."""
    gathered = concat_all_gather(keys)
    restore = torch.argsort(order)
    return gathered[restore.view(world_size(), -1)[rank()]]


def projection_head(in_features: int, *, dim: int, mlp_hidden: int | None) -> nn.Module:
    """v1: one linear layer to ``dim``; v2: Linear-ReLU-Linear with ``mlp_hidden`` units (MoCo v2
    section 2, "MLP head")."""
    if mlp_hidden is None:
        return nn.Linear(in_features, dim)
    return nn.Sequential(nn.Linear(in_features, mlp_hidden), nn.ReLU(inplace=True), nn.Linear(mlp_hidden, dim))


class MoCo(nn.Module):
    """MoCo v1 (``mlp_hidden=None``, T 0.07) or v2 (``mlp_hidden=2048``, T 0.2) around a vislab
    backbone (``forward_pooled``, ``num_features``).

    ``forward([queries_view, keys_view])`` returns ``{"loss", "accuracy"}`` (accuracy: % of
    queries whose positive key scores above every queued negative). In training mode it also
    moves the key encoder (``momentum_backbone`` + ``momentum_head``) towards the query encoder
    (``backbone`` + ``head``) before computing the keys, and enqueues the keys of every process
    after the loss; in eval mode it changes nothing. ``queue`` (queue_size, dim) and
    ``queue_ptr`` are buffers, so a checkpoint resumes the queue exactly. Each step enqueues
    ``batch * processes`` keys, which must divide ``queue_size``.

    BatchNorm must not let a query see its key through batch statistics (MoCo section 3.3):
      - several processes: shuffled BN, always. The key batch is gathered from every process,
        permuted on rank 0, split again and encoded; keys return to their images afterwards.
      - one process, ``bn_splits > 1``: the key batch is permuted and encoded as ``bn_splits``
        sub-batches, each normalised by its own statistics (the "SplitBatchNorm" of the official
        CIFAR demo), without changing the backbone's modules. With several processes
        ``bn_splits`` further splits each process's shuffled slice.
      - one process, ``bn_splits == 1``: no protection; use it with GroupNorm backbones.
    """

    views_per_image = 2

    def __init__(self, *, backbone: nn.Module, dim: int = 128, mlp_hidden: int | None = None,
                 queue_size: int = 65536, momentum: float = 0.999, temperature: float = 0.07,
                 bn_splits: int = 1):
        super().__init__()
        if bn_splits < 1:
            raise ValueError(f"bn_splits must be at least 1, got {bn_splits}")
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"momentum must lie in [0, 1], got {momentum}")
        self.momentum = momentum
        self.temperature = temperature
        self.bn_splits = bn_splits
        self.augmentation = "v1" if mlp_hidden is None else "v2"  # the paper's views (ssl/augment.py)
        self.backbone = backbone
        self.head = projection_head(backbone.num_features, dim=dim, mlp_hidden=mlp_hidden)
        self.momentum_backbone = momentum_copy(self.backbone)
        self.momentum_head = momentum_copy(self.head)
        self.register_buffer("queue", F.normalize(torch.randn(queue_size, dim), dim=1))
        self.register_buffer("queue_ptr", torch.zeros(1, dtype=torch.long))

    def no_weight_decay(self) -> set[str]:
        return {f"backbone.{n}" for n in getattr(self.backbone, "no_weight_decay", set)()}

    def _momentum_embed(self, images: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.momentum_head(self.momentum_backbone.forward_pooled(images)), dim=1)

    def _encode_in_splits(self, images: torch.Tensor) -> torch.Tensor:
        if images.shape[0] % self.bn_splits:
            raise ValueError(f"MoCo bn_splits={self.bn_splits} does not divide the batch of "
                             f"{images.shape[0]} images per process; choose a divisor of it")
        return torch.cat([self._momentum_embed(chunk) for chunk in images.chunk(self.bn_splits)])

    @torch.no_grad()
    def encode_keys(self, images: torch.Tensor) -> torch.Tensor:
        """L2-normalised keys of ``images`` by the momentum encoder, in the order of ``images``,
        with shuffled or split BatchNorm as the class docstring describes."""
        if world_size() > 1:
            shuffled, order = shuffle_across_processes(images)
            return unshuffle_across_processes(self._encode_in_splits(shuffled), order=order)
        if self.bn_splits == 1:
            return self._momentum_embed(images)
        order = torch.randperm(images.shape[0], device=images.device)
        return self._encode_in_splits(images[order])[torch.argsort(order)]

    @torch.no_grad()
    def enqueue(self, keys: torch.Tensor) -> None:
        """Replace the oldest queue entries by the keys of every process (rank order)."""
        keys = concat_all_gather(keys)
        queue_size, count = self.queue.shape[0], keys.shape[0]
        if queue_size % count:
            raise ValueError(f"MoCo queue_size {queue_size} is not a multiple of the {count} keys each step "
                             f"enqueues ({count // world_size()} per process x {world_size()} processes); "
                             f"choose a queue size divisible by the global batch")
        start = int(self.queue_ptr)
        self.queue[start:start + count] = keys.to(self.queue.dtype)
        self.queue_ptr[0] = (start + count) % queue_size

    def forward(self, views: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        if len(views) != self.views_per_image:
            raise ValueError(f"MoCo takes {self.views_per_image} views of each image, got {len(views)}")
        query_images, key_images = views
        queries = F.normalize(self.head(self.backbone.forward_pooled(query_images)), dim=1)
        with torch.no_grad():
            if self.training:
                momentum_update(online=self.backbone, target=self.momentum_backbone, momentum=self.momentum)
                momentum_update(online=self.head, target=self.momentum_head, momentum=self.momentum)
            keys = self.encode_keys(key_images)
        # a copy: the loss's backward needs the negatives that ``enqueue`` overwrites in place
        loss, logits = info_nce_loss(queries=queries, keys=keys, negatives=self.queue.clone().detach(),
                                     temperature=self.temperature)
        accuracy = (logits.detach().argmax(dim=1) == 0).float().mean() * 100
        if self.training:
            self.enqueue(keys)
        return {"loss": loss, "accuracy": accuracy}
