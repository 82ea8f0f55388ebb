"""What every detector meta-architecture shares: a trunk, the neck that turns its maps into a
feature pyramid, and the options of fine-tuning and frozen-backbone studies (frozen stages,
a frozen trunk, padding to a fixed square input, layer-wise lr decay over the trunk)."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from vislab.layers.norm import FrozenBatchNorm2d

RESNET_FREEZE_ORDER = ("stem", "res2", "res3", "res4", "res5")


class PyramidDetector(nn.Module):
    """A trunk and its neck; subclasses add heads and call ``pyramid(images)``.

    Args:
        backbone: a trunk with ``forward_features`` and ``output_shape``.
        fpn: the neck that turns the trunk's maps into the named pyramid (an FPN, ViTDet's simple
            pyramid, NAS-FPN), with its own ``output_shape``. (Named ``fpn`` for every neck, so
            checkpoints of every detector read alike.)
        freeze_at: freeze the first ``freeze_at`` of stem, res2, ..., res5 (detectron2's
            convention: 2 freezes the stem and res2); their BatchNorms become FrozenBN.
        frozen_backbone: freeze the whole backbone, norms in eval mode (detection on frozen
            backbones: only the neck and heads learn).
        square_pad: pad every batch with zeros at the bottom and right to this square side
            (ViTDet's fixed 1024 input, whose windows and position tables assume it); 0 keeps
            the batch's own padded size.
    """

    def __init__(self, *, backbone: nn.Module, fpn: nn.Module, freeze_at: int = 0, frozen_backbone: bool = False,
                 square_pad: int = 0):
        super().__init__()
        self.backbone = backbone
        self.fpn = fpn
        self.frozen_backbone = frozen_backbone
        self.square_pad = square_pad
        if frozen_backbone:
            _freeze(backbone)
        elif freeze_at:
            self._freeze_stages(freeze_at)

    def _freeze_stages(self, freeze_at: int) -> None:
        missing = [name for name in RESNET_FREEZE_ORDER if not hasattr(self.backbone, name)]
        if missing:
            raise ValueError(f"freeze_at={freeze_at} needs a ResNet-style backbone with {RESNET_FREEZE_ORDER}; "
                             f"{type(self.backbone).__name__} has no {missing}")
        for name in RESNET_FREEZE_ORDER[:freeze_at]:
            stage = FrozenBatchNorm2d.convert(getattr(self.backbone, name))
            setattr(self.backbone, name, stage)
            _freeze(stage)

    def train(self, mode: bool = True) -> "PyramidDetector":
        super().train(mode)
        if self.frozen_backbone:
            self.backbone.eval()
        return self

    def no_weight_decay(self) -> set[str]:
        return {f"backbone.{n}" for n in getattr(self.backbone, "no_weight_decay", set)()}

    @property
    def num_lr_layers(self) -> int:
        """The backbone's layer count for layer-wise lr decay (0 when it numbers none)."""
        return getattr(self.backbone, "num_lr_layers", 0)

    def lr_layer_id(self, name: str) -> int:
        """The backbone's numbering for its parameters; the neck and heads are the top layer
        (full lr), as ViTDet's ``get_vit_lr_decay_rate``."""
        if name.startswith("backbone."):
            return self.backbone.lr_layer_id(name.removeprefix("backbone."))
        return self.num_lr_layers

    def pyramid(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """The neck's maps of ``images`` (padded to ``square_pad`` first); the trunk's own maps
        are freed once the neck is built."""
        images = self._pad_square(images)
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen_backbone):
            features = self.backbone.forward_features(images)
        return self.fpn(features)

    def _pad_square(self, images: torch.Tensor) -> torch.Tensor:
        if not self.square_pad:
            return images
        height, width = images.shape[-2:]
        if max(height, width) > self.square_pad:
            raise ValueError(f"a {height}x{width} batch does not fit the model's {self.square_pad}-pixel square "
                             f"input: resize images to at most {self.square_pad} on the longer side")
        return F.pad(images, (0, self.square_pad - width, 0, self.square_pad - height))


def _freeze(module: nn.Module) -> None:
    for param in module.parameters():
        param.requires_grad_(False)


def default_image_sizes(images: torch.Tensor, image_sizes: Sequence[tuple[int, int]] | None) -> list[tuple[int, int]]:
    """Every image's size: the given ones, or the whole (unpadded) batch's."""
    return list(image_sizes) if image_sizes is not None else [tuple(images.shape[-2:])] * len(images)
