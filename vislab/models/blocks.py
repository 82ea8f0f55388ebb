"""The residual and transformer blocks of vislab's trunks, found by class.

These are the units the trainer wraps one at a time: activation checkpointing recomputes a
block's activations in the backward pass, ``torch.compile`` compiles a block's forward (so a
graph break stays inside one block), and FSDP shards block by block. One registry serves them
all, so a new block type is added here once, wherever it appears (classifiers, detector
trunks, MAE/MoCo encoders and decoders, video models).
"""
from __future__ import annotations

from torch import nn

from vislab.models.backbones.convnext import ConvNeXtBlock
from vislab.models.backbones.mvit_trunk import MultiScaleBlock
from vislab.models.backbones.resnet import BasicBlock, Bottleneck
from vislab.models.backbones.resnet3d import Bottleneck3d
from vislab.models.backbones.resnetv2 import PreActBottleneck
from vislab.models.backbones.vit import TransformerBlock
from vislab.models.backbones.x3d import X3DBlock

BLOCK_TYPES: tuple[type[nn.Module], ...] = (
    TransformerBlock,  # ViT, DeiT, ViTDet trunks; MAE encoder and decoder; MoCo v3
    MultiScaleBlock,  # image MViTv2, video MViT / MViTv2
    ConvNeXtBlock,
    BasicBlock, Bottleneck,  # ResNet / ResNeXt (also AdderNet and IFT convolutions)
    PreActBottleneck,  # BiT ResNetV2
    Bottleneck3d,  # C2D / I3D / Slow and both SlowFast pathways (with their Non-local blocks)
    X3DBlock,
)


def find_blocks(model: nn.Module) -> dict[str, nn.Module]:
    """The blocks of ``model`` by qualified name, in module order. A block is not searched for
    blocks inside it: the outermost one is the unit (checkpointing it covers what it holds)."""
    found: dict[str, nn.Module] = {}

    def visit(module: nn.Module, prefix: str) -> None:
        for name, child in module.named_children():
            qualified = f"{prefix}{name}"
            if isinstance(child, BLOCK_TYPES):
                found[qualified] = child
            else:
                visit(child, f"{qualified}.")

    visit(model, "")
    return found
