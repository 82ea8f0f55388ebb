"""Registry entries for ResNet and ResNeXt image classifiers (torchvision's reference counts)."""
from __future__ import annotations

from functools import partial
from typing import Sequence

from vislab.models.backbones.resnet import ResNet
from vislab.models.classifier import ImageClassifier
from vislab.models.registry_types import imagenet_classifier_entry


def resnet_classifier(*, num_classes: int, block: str, depths: Sequence[int], groups: int = 1,
                      width_per_group: int = 64, width: float = 1.0, norm: str = "BN",
                      norm_groups: int = 32, small_stem: bool = False,
                      zero_init_residual: bool = False, in_chans: int = 3, stride_in_1x1: bool = False,
                      conv: str = "conv", dropout: float = 0.0, zero_init_head: bool = False,
                      logit_norm: bool = False) -> ImageClassifier:
    """A ResNet/ResNeXt trunk (see ``ResNet``) with a linear classifier on its pooled last stage
    (``logit_norm``: BatchNorm on the logits, AdderNet's classifier)."""
    backbone = ResNet(block=block, depths=depths, groups=groups, width_per_group=width_per_group,
                      width=width, norm=norm, norm_groups=norm_groups, small_stem=small_stem,
                      zero_init_residual=zero_init_residual, in_chans=in_chans, stride_in_1x1=stride_in_1x1,
                      conv=conv)
    return ImageClassifier(backbone, num_classes=num_classes, dropout=dropout, zero_init_head=zero_init_head,
                           logit_norm=logit_norm)


_entry = partial(imagenet_classifier_entry, family="resnet", builder=resnet_classifier,
                 source="torchvision weight metadata")


ENTRIES = (
    _entry("resnet18", top1=69.758, params=11_689_512, gmacs=1.814, block="basic", depths=(2, 2, 2, 2)),
    _entry("resnet34", top1=73.314, params=21_797_672, gmacs=3.664, block="basic", depths=(3, 4, 6, 3)),
    _entry("resnet50", top1=76.13, params=25_557_032, gmacs=4.089, block="bottleneck", depths=(3, 4, 6, 3)),
    _entry("resnet101", top1=77.374, params=44_549_160, gmacs=7.801, block="bottleneck", depths=(3, 4, 23, 3)),
    _entry("resnet152", top1=78.312, params=60_192_808, gmacs=11.514, block="bottleneck", depths=(3, 8, 36, 3)),
    _entry("resnext50_32x4d", top1=77.618, params=25_028_904, gmacs=4.230, block="bottleneck",
           depths=(3, 4, 6, 3), groups=32, width_per_group=4),
    _entry("resnext101_32x8d", top1=79.312, params=88_791_336, gmacs=16.414, block="bottleneck",
           depths=(3, 4, 23, 3), groups=32, width_per_group=8),
    _entry("resnext101_64x4d", top1=83.246, params=83_455_272, gmacs=15.460, block="bottleneck",
           depths=(3, 4, 23, 3), groups=64, width_per_group=4),
)

# AdderNet (Chen et al., 2020): the ResNets with adder layers in every residual stage and BatchNorm
# on the logits; the stem and classifier keep their multiplications. Params are the ResNet's plus
# the logits' BatchNorm; GMACs count an adder layer's |x - w| accumulations like multiply-adds
# (``vislab flops --energy`` tells the two apart). ResNet-20 is the CIFAR layout (3 stages of 3
# basic blocks, 16-64 channels, 3x3 stem; 1x1 projection shortcuts as AdderNet's code has).
_adder = partial(_entry, conv="adder", logit_norm=True, source="AdderNet README (huawei-noah/AdderNet)")
_cifar = dict(block="basic", depths=(3, 3, 3), width=0.25, small_stem=True)
ADDER_ENTRIES = (
    _entry("resnet20", top1=None, params=None, gmacs=None, source="CIFAR layout (He et al., 2016, section 4.2)",
           **_cifar),
    _adder("adder_resnet20", params=None, gmacs=None, **_cifar),
    _adder("adder_resnet18", top1=67.0, params=11_691_512, gmacs=1.814, block="basic", depths=(2, 2, 2, 2)),
    _adder("adder_resnet50", top1=74.9, params=25_559_032, gmacs=4.089, block="bottleneck", depths=(3, 4, 6, 3)),
)
ENTRIES += ADDER_ENTRIES
