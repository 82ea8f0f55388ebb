"""The R-CNN box parameterisation (Girshick et al., 2014, appendix C; Faster R-CNN eq. 2)."""
from __future__ import annotations

import math
from typing import Sequence

import torch

# exp(dw) is clamped so a box grows at most 1000/16 times (as detectron2 and torchvision do)
SCALE_CLAMP = math.log(1000.0 / 16)


class BoxCoder:
    """Encodes a target box relative to a reference box as ``(dx, dy, dw, dh)`` scaled by
    ``weights`` (RPN (1, 1, 1, 1); Fast R-CNN head (10, 10, 5, 5)), and decodes it back."""

    def __init__(self, *, weights: Sequence[float], scale_clamp: float = SCALE_CLAMP):
        self.weights = tuple(float(w) for w in weights)
        self.scale_clamp = scale_clamp

    def encode(self, boxes: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
        wx, wy, ww, wh = self.weights
        ref_w = reference[:, 2] - reference[:, 0]
        ref_h = reference[:, 3] - reference[:, 1]
        ref_x = reference[:, 0] + 0.5 * ref_w
        ref_y = reference[:, 1] + 0.5 * ref_h
        w = boxes[:, 2] - boxes[:, 0]
        h = boxes[:, 3] - boxes[:, 1]
        x = boxes[:, 0] + 0.5 * w
        y = boxes[:, 1] + 0.5 * h
        return torch.stack((wx * (x - ref_x) / ref_w, wy * (y - ref_y) / ref_h,
                            ww * torch.log(w / ref_w), wh * torch.log(h / ref_h)), dim=1)

    def decode(self, deltas: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
        """Boxes from ``deltas`` [N, 4k] (k boxes per reference, e.g. one per class) and
        ``reference`` [N, 4]; returns [N, 4k]."""
        deltas = deltas.float()
        reference = reference.to(deltas.dtype)
        wx, wy, ww, wh = self.weights
        ref_w = reference[:, 2:3] - reference[:, 0:1]
        ref_h = reference[:, 3:4] - reference[:, 1:2]
        ref_x = reference[:, 0:1] + 0.5 * ref_w
        ref_y = reference[:, 1:2] + 0.5 * ref_h
        dx, dy = deltas[:, 0::4] / wx, deltas[:, 1::4] / wy
        dw = torch.clamp(deltas[:, 2::4] / ww, max=self.scale_clamp)
        dh = torch.clamp(deltas[:, 3::4] / wh, max=self.scale_clamp)
        x = dx * ref_w + ref_x
        y = dy * ref_h + ref_y
        w = torch.exp(dw) * ref_w
        h = torch.exp(dh) * ref_h
        boxes = torch.stack((x - 0.5 * w, y - 0.5 * h, x + 0.5 * w, y + 0.5 * h), dim=2)
        return boxes.reshape(deltas.shape)
