"""Batch mixing: mixup (Zhang et al., 2018) and CutMix (Yun et al., 2019) with soft targets.

Built on torchvision.transforms.v2's ``MixUp`` and ``CutMix``; with both enabled one of the two
is chosen per batch, as in the DeiT recipe. Labels become class-probability rows, which
``F.cross_entropy`` takes directly (label smoothing still applies).
"""
from __future__ import annotations

import torch
from torchvision.transforms import v2


class BatchMixing:
    def __init__(self, *, num_classes: int, mixup_alpha: float, cutmix_alpha: float):
        choices = []
        if mixup_alpha > 0:
            choices.append(v2.MixUp(alpha=mixup_alpha, num_classes=num_classes))
        if cutmix_alpha > 0:
            choices.append(v2.CutMix(alpha=cutmix_alpha, num_classes=num_classes))
        if not choices:
            raise ValueError("BatchMixing needs mixup_alpha > 0 or cutmix_alpha > 0")
        self.mix = choices[0] if len(choices) == 1 else v2.RandomChoice(choices)

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mixed images and (N, num_classes) soft targets."""
        return self.mix(images, labels)
