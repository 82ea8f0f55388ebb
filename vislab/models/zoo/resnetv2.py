"""Registry entries for BiT pre-activation ResNet v2 classifiers (timm's reference counts)."""
from __future__ import annotations

from functools import partial
from typing import Sequence

from vislab.models.backbones.resnetv2 import ResNetV2
from vislab.models.classifier import ImageClassifier
from vislab.models.registry_types import imagenet_classifier_entry


def resnetv2_classifier(*, num_classes: int, depths: Sequence[int], width_factor: float = 1.0,
                        norm: str = "GN", norm_groups: int = 32, weight_std: bool = True,
                        in_chans: int = 3, drop_path_rate: float = 0.0, dropout: float = 0.0,
                        zero_init_head: bool = False) -> ImageClassifier:
    """A ResNet v2 trunk (see ``ResNetV2``) with a linear classifier on the pooled, activated
    ``res5``.

    ``zero_init_head`` starts the classifier at zero weight and bias, as BiT does for every
    transfer (BiT-HyperRule, section 3.3), so fine-tuning starts from uniform predictions.
    """
    backbone = ResNetV2(depths=depths, width_factor=width_factor, norm=norm,
                        norm_groups=norm_groups, weight_std=weight_std,
                        drop_path_rate=drop_path_rate, in_chans=in_chans)
    return ImageClassifier(backbone, num_classes=num_classes, dropout=dropout, zero_init_head=zero_init_head)


_entry = partial(imagenet_classifier_entry, family="resnetv2", builder=resnetv2_classifier,
                 source="timm resnetv2_*_bit (google-research/big_transfer)")


ENTRIES = (
    _entry("resnetv2_50x1_bit", params=25_549_352, gmacs=4.089, depths=(3, 4, 6, 3), width_factor=1),
    _entry("resnetv2_101x1_bit", params=44_541_480, gmacs=7.801, depths=(3, 4, 23, 3), width_factor=1),
    _entry("resnetv2_50x3_bit", params=217_319_080, gmacs=None, depths=(3, 4, 6, 3), width_factor=3),
)
