"""NAS-FPN (Ghiasi et al., 2019), as the TensorFlow Model Garden builds it
(``official/vision/modeling/decoders/nasfpn.py``): the heavier decoder that detection on a frozen
backbone uses (Vasconcelos et al., 2022).

The backbone's levels 3-5 are projected to ``channels`` (1x1 conv + norm where widths differ) and
levels 6-7 are 2x max-pools of the level below. Each repeat then runs the seven merging cells the
architecture search found (section 3, figure 7): a cell resamples two earlier nodes to its level
(max-pool down, nearest up), combines them by sum or by global attention
(``a + b * sigmoid(global max pool of a)``, ``a`` the input from the coarser level), adds, if it
is an output cell, the earlier nodes of its level no cell has read yet, and applies ReLU, a 3x3
convolution and the norm. The last five nodes, one per level, feed the next repeat; repeats do
not share weights.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from vislab.layers import get_norm
from vislab.models.shape_spec import ShapeSpec

# (level, combine, (input, input), is_output): the Model Garden's NASFPN_BLOCK_SPECS; node
# indices count the five input levels 3..7 first, then each cell's output in turn
CELLS = (
    (4, "attention", (1, 3), False),
    (4, "sum", (1, 5), False),
    (3, "sum", (0, 6), True),
    (4, "sum", (6, 7), True),
    (5, "attention", (7, 8), True),
    (7, "attention", (6, 9), True),
    (6, "attention", (9, 10), True),
)
MIN_LEVEL, MAX_LEVEL = 3, 7


def _conv(w_in: int, w_out: int, kernel: int) -> nn.Conv2d:
    conv = nn.Conv2d(w_in, w_out, kernel, padding=kernel // 2)
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")  # the Model Garden's init
    nn.init.zeros_(conv.bias)
    return conv


def _resample(x: torch.Tensor, *, from_level: int, to_level: int, size: tuple[int, int]) -> torch.Tensor:
    if to_level > from_level:
        stride = 2 ** (to_level - from_level)
        return F.max_pool2d(x, kernel_size=stride, stride=stride, ceil_mode=True)  # TF's 'SAME' pooling
    if to_level < from_level:
        return F.interpolate(x, size=size, mode="nearest")
    return x


def _global_attention(coarse: torch.Tensor, fine: torch.Tensor) -> torch.Tensor:
    return coarse + fine * torch.sigmoid(coarse.amax(dim=(2, 3), keepdim=True))


class NASFPN(nn.Module):
    """``p3``..``p7`` of ``channels`` from the backbone outputs ``in_features`` (its levels 3-5,
    finest first), after ``num_repeats`` repeats of the merging cells.

    Args:
        norm: the norm after every convolution (BatchNorm in the Model Garden, "SyncBN" across
            processes).
    """

    def __init__(self, *, input_shapes: dict[str, ShapeSpec], in_features: Sequence[str], channels: int = 256,
                 num_repeats: int = 5, norm: str = "BN"):
        super().__init__()
        missing = [name for name in in_features if name not in input_shapes]
        if missing:
            raise ValueError(f"NAS-FPN in_features {missing} are not backbone outputs; it has {sorted(input_shapes)}")
        strides = [input_shapes[name].stride for name in in_features]
        levels = [s.bit_length() - 1 for s in strides]
        if levels != list(range(MIN_LEVEL, MIN_LEVEL + len(levels))):
            raise ValueError(f"NAS-FPN reads consecutive backbone levels from {MIN_LEVEL} (strides 8, 16, ...); "
                             f"{list(in_features)} have strides {strides}")
        self.in_features = tuple(in_features)
        self.inputs = nn.ModuleList(
            nn.Sequential(_conv(input_shapes[name].channels, channels, 1), get_norm(norm, channels))
            if input_shapes[name].channels != channels else nn.Identity()
            for name in in_features)
        self.repeats = nn.ModuleList(
            nn.ModuleList(nn.Sequential(nn.ReLU(), _conv(channels, channels, 3), get_norm(norm, channels))
                          for _ in CELLS)
            for _ in range(num_repeats))
        self._shapes = {f"p{level}": ShapeSpec(channels=channels, stride=2**level)
                        for level in range(MIN_LEVEL, MAX_LEVEL + 1)}

    def output_shape(self) -> dict[str, ShapeSpec]:
        return dict(self._shapes)

    def forward(self, features: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        pyramid = [project(features[name]) for project, name in zip(self.inputs, self.in_features)]
        while len(pyramid) < MAX_LEVEL - MIN_LEVEL + 1:
            pyramid.append(F.max_pool2d(pyramid[-1], kernel_size=2, stride=2, ceil_mode=True))
        sizes = {MIN_LEVEL + i: tuple(x.shape[-2:]) for i, x in enumerate(pyramid)}
        for cells in self.repeats:
            pyramid = self._run_cells(cells, pyramid, sizes)
        return dict(zip(self._shapes, pyramid))

    @staticmethod
    def _run_cells(cells: nn.ModuleList, pyramid: list[torch.Tensor], sizes: dict) -> list[torch.Tensor]:
        nodes = list(pyramid)
        node_levels = list(range(MIN_LEVEL, MAX_LEVEL + 1))
        reads = [0] * len(nodes)
        for cell, (level, combine, inputs, is_output) in zip(cells, CELLS):
            resampled = [_resample(nodes[i], from_level=node_levels[i], to_level=level, size=sizes[level])
                         for i in inputs]
            for i in inputs:
                reads[i] += 1
            if combine == "sum":
                x = resampled[0] + resampled[1]
            else:
                first_is_coarser = node_levels[inputs[0]] >= node_levels[inputs[1]]
                x = _global_attention(*(resampled if first_is_coarser else resampled[::-1]))
            if is_output:
                for i, (node, node_level) in enumerate(zip(nodes, node_levels)):
                    if reads[i] == 0 and node_level == level:
                        x = x + node
                        reads[i] += 1
            nodes.append(cell(x))
            node_levels.append(level)
            reads.append(0)
        outputs = dict(zip(node_levels[-len(pyramid):], nodes[-len(pyramid):]))
        return [outputs[level] for level in range(MIN_LEVEL, MAX_LEVEL + 1)]
