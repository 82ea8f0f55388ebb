"""MoCo v3 (Chen, Xie & He, 2021): no queue; each view's query is contrasted with the momentum
keys of the other view of every image in the global batch (Algorithm 1).

Layout of the official ``moco/builder.py``: base encoder = backbone + projector MLP, followed by
a predictor MLP; the momentum encoder copies backbone + projector. MLPs are Linear (no bias) -
BatchNorm - ReLU with a final Linear + BatchNorm without affine parameters (SimCLR's design; the
official ResNet predictor has no final BN). The momentum rises from ``m0`` to 1 along a half
cosine over training (BYOL's schedule, the official ``--moco-m-cos``).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from vislab.ssl.gather import concat_all_gather, rank
from vislab.ssl.moco import momentum_copy, momentum_update


def mlp(*, num_layers: int, in_dim: int, hidden_dim: int, out_dim: int, last_bn: bool) -> nn.Sequential:
    """MoCo v3's projector / predictor: ``num_layers`` bias-free Linear layers, BN + ReLU after
    every hidden one, and with ``last_bn`` a BN without scale or shift after the output."""
    if num_layers < 1:
        raise ValueError(f"an MLP needs at least 1 layer, got {num_layers}")
    layers: list[nn.Module] = []
    for index in range(num_layers):
        last = index == num_layers - 1
        width_in = in_dim if index == 0 else hidden_dim
        width_out = out_dim if last else hidden_dim
        layers.append(nn.Linear(width_in, width_out, bias=False))
        if not last:
            layers += [nn.BatchNorm1d(width_out), nn.ReLU(inplace=True)]
        elif last_bn:
            layers.append(nn.BatchNorm1d(width_out, affine=False))
    return nn.Sequential(*layers)


def contrastive_loss(*, queries: torch.Tensor, keys: torch.Tensor,
                     temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``ctr(q, k)`` of Algorithm 1: cross-entropy of this process's queries (N, C) against the
    keys of every process (gathered, so the positive of query i on rank r is key ``r * N + i``),
    cosine similarities over ``temperature``, times ``2 * temperature`` (the official scaling,
    which makes the gradient's size independent of T). Returns the loss and the top-1 accuracy (%)."""
    queries = F.normalize(queries, dim=1)
    keys = F.normalize(concat_all_gather(keys), dim=1)
    logits = queries @ keys.T / temperature
    labels = torch.arange(queries.shape[0], device=queries.device) + queries.shape[0] * rank()
    loss = F.cross_entropy(logits, labels) * (2 * temperature)
    accuracy = (logits.detach().argmax(dim=1) == labels).float().mean() * 100
    return loss, accuracy


class MoCoV3(nn.Module):
    """MoCo v3 around a vislab backbone (``forward_pooled``, ``num_features``).

    ``forward([view1, view2])`` returns ``{"loss", "accuracy"}`` with the symmetric loss
    ``ctr(q1, k2) + ctr(q2, k1)``. In training mode each forward first moves the momentum
    encoder (``momentum_backbone`` + ``momentum_projector``) with the momentum of the current
    ``step`` (a buffer, so it resumes), then advances ``step``. Call ``set_total_steps`` once
    to get the cosine schedule ``m_t = 1 - (1 - m0) (cos(pi t / T) + 1) / 2``; until then the
    momentum stays ``m0``, as the official code without ``--moco-m-cos``.

    Args:
        dim, mlp_dim: output and hidden widths of projector and predictor (256, 4096).
        projector_layers: 2 for ResNet, 3 for ViT; predictor_layers: 2.
        predictor_last_bn: BN after the predictor's output (official: ViT yes, ResNet no).
        momentum: m0 (0.99); temperature: 1.0 for ResNet, 0.2 for ViT.
        freeze_patch_embed: keep the ViT patch projection at its random initialisation
            (MoCo v3 section 4.2, "random patch projection"), which stabilises ViT training.
    """

    views_per_image = 2
    augmentation = "v3"  # BYOL's asymmetric views (ssl/augment.py)

    def __init__(self, *, backbone: nn.Module, dim: int = 256, mlp_dim: int = 4096,
                 projector_layers: int = 2, predictor_layers: int = 2, predictor_last_bn: bool = False,
                 momentum: float = 0.99, temperature: float = 1.0, freeze_patch_embed: bool = False):
        super().__init__()
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"momentum must lie in [0, 1], got {momentum}")
        if freeze_patch_embed:
            if not isinstance(getattr(backbone, "patch_embed", None), nn.Module):
                raise ValueError(f"freeze_patch_embed needs a backbone with a patch embedding (ViT); "
                                 f"{type(backbone).__name__} has none")
            backbone.patch_embed.requires_grad_(False)
        self.base_momentum = momentum
        self.temperature = temperature
        self.total_steps: int | None = None
        self.backbone = backbone
        self.projector = mlp(num_layers=projector_layers, in_dim=backbone.num_features, hidden_dim=mlp_dim,
                             out_dim=dim, last_bn=True)
        self.predictor = mlp(num_layers=predictor_layers, in_dim=dim, hidden_dim=mlp_dim, out_dim=dim,
                             last_bn=predictor_last_bn)
        self.momentum_backbone = momentum_copy(self.backbone)
        self.momentum_projector = momentum_copy(self.projector)
        self.register_buffer("step", torch.zeros((), dtype=torch.long))

    def no_weight_decay(self) -> set[str]:
        return {f"backbone.{n}" for n in getattr(self.backbone, "no_weight_decay", set)()}

    def set_total_steps(self, total: int) -> None:
        """The training length ``T`` of the momentum schedule, in optimizer steps."""
        if total < 1:
            raise ValueError(f"total_steps must be at least 1, got {total}")
        self.total_steps = int(total)

    def current_momentum(self) -> float:
        if self.total_steps is None:
            return self.base_momentum
        progress = min(1.0, int(self.step) / self.total_steps)
        return 1.0 - (1.0 - self.base_momentum) * (math.cos(math.pi * progress) + 1.0) / 2.0

    def _query(self, images: torch.Tensor) -> torch.Tensor:
        return self.predictor(self.projector(self.backbone.forward_pooled(images)))

    def _key(self, images: torch.Tensor) -> torch.Tensor:
        return self.momentum_projector(self.momentum_backbone.forward_pooled(images))

    def forward(self, views: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        if len(views) != self.views_per_image:
            raise ValueError(f"MoCoV3 takes {self.views_per_image} views of each image, got {len(views)}")
        first, second = views
        query1, query2 = self._query(first), self._query(second)
        with torch.no_grad():
            if self.training:
                momentum = self.current_momentum()
                momentum_update(online=self.backbone, target=self.momentum_backbone, momentum=momentum)
                momentum_update(online=self.projector, target=self.momentum_projector, momentum=momentum)
                self.step += 1
            key1, key2 = self._key(first), self._key(second)
        loss12, accuracy12 = contrastive_loss(queries=query1, keys=key2, temperature=self.temperature)
        loss21, accuracy21 = contrastive_loss(queries=query2, keys=key1, temperature=self.temperature)
        return {"loss": loss12 + loss21, "accuracy": (accuracy12 + accuracy21) / 2}
