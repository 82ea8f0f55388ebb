"""What a backbone tells necks and heads about each output it produces."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ShapeSpec:
    """Channel count and stride (input pixels per output pixel) of one feature map."""

    channels: int
    stride: int
