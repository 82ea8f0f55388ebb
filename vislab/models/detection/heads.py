"""The per-region heads of Mask R-CNN: box head, box predictor and mask head.

Box head: "2fc" is two 1024-wide fully connected layers (FPN section 5.2); "4conv1fc" is four
3x3 convolutions, optionally with a norm, then one fc layer, the head the Group Normalization
paper uses for Mask R-CNN (Wu & He, 2018, section 6.1). The mask head is four 3x3 convolutions, a
2x deconvolution and a per-class 1x1 mask predictor (Mask R-CNN figure 4, right).
"""
from __future__ import annotations

import torch
from torch import nn

from vislab.layers import get_norm

BOX_HEADS = ("2fc", "4conv1fc")


def _conv3x3(w_in: int, w_out: int, *, norm: str) -> list[nn.Module]:
    conv = nn.Conv2d(w_in, w_out, 3, padding=1, bias=norm == "none")
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)
    layers: list[nn.Module] = [conv]
    if norm != "none":
        layers.append(get_norm(norm, w_out))
    return layers + [nn.ReLU(inplace=True)]


def _fc(w_in: int, w_out: int) -> nn.Linear:
    fc = nn.Linear(w_in, w_out)
    nn.init.kaiming_uniform_(fc.weight, a=1)
    nn.init.zeros_(fc.bias)
    return fc


class BoxHead(nn.Module):
    def __init__(self, *, channels: int, resolution: int, kind: str = "2fc", norm: str = "none",
                 conv_dim: int = 256, fc_dim: int = 1024):
        super().__init__()
        if kind not in BOX_HEADS:
            raise ValueError(f"box_head={kind!r} is not one of {', '.join(BOX_HEADS)}")
        num_convs, num_fcs = (0, 2) if kind == "2fc" else (4, 1)
        convs: list[nn.Module] = []
        for i in range(num_convs):
            convs += _conv3x3(channels if i == 0 else conv_dim, conv_dim, norm=norm)
        self.convs = nn.Sequential(*convs)
        width = (conv_dim if num_convs else channels) * resolution**2
        self.fcs = nn.ModuleList(_fc(width if i == 0 else fc_dim, fc_dim) for i in range(num_fcs))
        self.out_features = fc_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.convs(x).flatten(1)
        for fc in self.fcs:
            x = fc(x).relu_()
        return x


class BoxPredictor(nn.Module):
    """Class scores (``num_classes`` + background, last) and class-specific box deltas, or one
    class-agnostic set of deltas (``class_agnostic``, as Cascade R-CNN regresses)."""

    def __init__(self, *, in_features: int, num_classes: int, class_agnostic: bool = False):
        super().__init__()
        self.cls_score = nn.Linear(in_features, num_classes + 1)
        self.bbox_pred = nn.Linear(in_features, 4 if class_agnostic else 4 * num_classes)
        nn.init.normal_(self.cls_score.weight, std=0.01)
        nn.init.normal_(self.bbox_pred.weight, std=0.001)
        nn.init.zeros_(self.cls_score.bias)
        nn.init.zeros_(self.bbox_pred.bias)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.cls_score(x), self.bbox_pred(x)


class MaskHead(nn.Module):
    """Mask logits at twice the pooled resolution (28x28 from 14x14 features) for one class per
    region. The predictor is the per-class 1x1 convolution of Mask R-CNN, but only the row of the
    class asked for is applied (the loss reads the ground-truth class's mask, inference the
    predicted class's; section 3): the same logits as all classes then one picked, without the
    ``[N, classes, 28, 28]`` tensor, the head's largest. ``predictor`` holds the weights (the
    detectron2/torchvision layout) but is not called as a module, so hooks on it do not fire."""

    def __init__(self, *, channels: int, num_classes: int, norm: str = "none", conv_dim: int = 256,
                 num_convs: int = 4):
        super().__init__()
        layers: list[nn.Module] = []
        for i in range(num_convs):
            layers += _conv3x3(channels if i == 0 else conv_dim, conv_dim, norm=norm)
        self.convs = nn.Sequential(*layers)
        self.deconv = nn.ConvTranspose2d(conv_dim, conv_dim, 2, stride=2)
        nn.init.kaiming_normal_(self.deconv.weight, mode="fan_out", nonlinearity="relu")
        nn.init.zeros_(self.deconv.bias)
        self.predictor = nn.Conv2d(conv_dim, num_classes, 1)
        nn.init.normal_(self.predictor.weight, std=0.001)
        nn.init.zeros_(self.predictor.bias)

    def forward(self, x: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        """Logits ``[N, 28, 28]`` of region ``i``'s mask for class ``classes[i]``."""
        return self.upsample_and_predict(self.convs(x), classes)

    def upsample_and_predict(self, x: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        """The deconvolution and the class rows of the predictor on the convolutions' output
        (a separate call lets a caller free the pooled input before the 28x28 peak)."""
        x = self.deconv(x).relu_()  # in place: the deconvolution's backward needs only its input
        weight = self.predictor.weight[classes, :, 0, 0].to(x.dtype)
        bias = self.predictor.bias[classes].to(x.dtype)
        return torch.einsum("nchw,nc->nhw", x, weight) + bias[:, None, None]
