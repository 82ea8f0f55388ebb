"""Detection transforms on torchvision.transforms.v2, called as ``transform(image, target)``:
boxes (``tv_tensors.BoundingBoxes``) and masks (``tv_tensors.Mask``) follow every geometric step.

Training: multi-scale training, one shorter side drawn per image with the longer side capped
(detectron2's ResizeShortestEdge "choice"), or large-scale jitter (Ghiasi et al., 2021, "Simple
Copy-Paste"; the ViTDet recipe, Li et al., 2022): resize to fit ``lsj_size * scale`` with
scale ~ U(lsj_scale), crop a random window of at most ``lsj_size`` square and pad it to
``lsj_size`` square. Then a horizontal flip, and boxes that became degenerate are dropped with
their labels and masks. Evaluation: one deterministic shorter-side resize. Before any resize, an
image too thin to keep a row or column is padded (``PadThinImage``). All random draws
come from torch's default generator, which ``SeededSamples`` seeds per sample.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import torch
from torchvision import tv_tensors
from torchvision.ops import masks_to_boxes
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F


class FixedSizeCrop(v2.Transform):
    """A random window of at most ``size`` x ``size``, padded with zeros at the bottom and right to
    exactly that size (detectron2 / torchvision-references ``FixedSizeCrop``, absent from v2).

    It runs after normalisation, so the padding is the mean colour, like the zero padding of a
    batch (ViTDet pads its normalised images to a square the same way).
    """

    def __init__(self, *, size: int):
        super().__init__()
        self.size = size

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        height, width = v2.query_size(flat_inputs)
        crop_height, crop_width = min(height, self.size), min(width, self.size)
        return {"top": int(torch.randint(height - crop_height + 1, ())),
                "left": int(torch.randint(width - crop_width + 1, ())),
                "height": crop_height, "width": crop_width,
                "padding": [0, 0, self.size - crop_width, self.size - crop_height]}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        inpt = self._call_kernel(F.crop, inpt, top=params["top"], left=params["left"],
                                 height=params["height"], width=params["width"])
        return self._call_kernel(F.pad, inpt, padding=params["padding"], fill=0)


class RecomputeBoxes:
    """Replace each box by the tight box of its mask (detectron2's ``recompute_boxes``, which
    ViTDet's large-scale-jitter recipe turns on): a box clipped by a crop is not the box of the
    part of the object left inside it. An object cropped away gets an empty box, which
    ``SanitizeBoundingBoxes`` then removes with its label and mask."""

    def __call__(self, image: Any, target: dict) -> tuple[Any, dict]:
        masks = target.get("masks")
        if masks is None or len(masks) == 0:
            return image, target
        boxes = torch.zeros((len(masks), 4), dtype=torch.float32)
        masks = masks.as_subclass(torch.Tensor)
        present = masks.flatten(1).any(dim=1).bool()  # any() keeps uint8 masks' dtype
        if present.any():
            boxes[present] = masks_to_boxes(masks[present]).float()
            boxes[present, 2:] += 1  # the last pixel's far edge
        return image, {**target, "boxes": tv_tensors.wrap(boxes, like=target["boxes"])}


class PadThinImage(v2.Transform):
    """Pad an image so thin that resizing its longer side to ``min_long_side`` would leave its
    shorter side under one pixel (a 2000 x 1 strip at 1333 pixels), at the bottom or right, so
    that the resize gives at least one pixel; other images pass unchanged. Boxes and masks keep
    their coordinates."""

    def __init__(self, *, min_long_side: int):
        super().__init__()
        self.min_long_side = min_long_side

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        height, width = v2.query_size(flat_inputs)
        least = math.ceil(max(height, width) / self.min_long_side)
        return {"padding": [0, 0, max(0, least - width), max(0, least - height)]}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if not any(params["padding"]):
            return inpt
        return self._call_kernel(F.pad, inpt, padding=params["padding"], fill=0)


def _normalise(mean: Sequence[float], std: Sequence[float]) -> list:
    return [v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean=list(mean), std=list(std))]


def detection_train_transform(*, min_sizes: Sequence[int], max_size: int, hflip: bool, lsj_size: int | None,
                              lsj_scale: Sequence[float], mean: Sequence[float],
                              std: Sequence[float]) -> v2.Compose:
    if lsj_size is None:
        resize = [PadThinImage(min_long_side=max_size), v2.RandomShortestSize(min_size=list(min_sizes), max_size=max_size)]
    else:
        resize = [PadThinImage(min_long_side=int(lsj_size * lsj_scale[0])),
                  v2.ScaleJitter(target_size=(lsj_size, lsj_size), scale_range=tuple(lsj_scale))]
    steps = [v2.ToImage(), *resize, *([v2.RandomHorizontalFlip()] if hflip else []), *_normalise(mean, std)]
    if lsj_size is not None:
        steps += [FixedSizeCrop(size=lsj_size), RecomputeBoxes()]
    return v2.Compose(steps + [v2.SanitizeBoundingBoxes()])


def detection_eval_transform(*, min_size: int, max_size: int, mean: Sequence[float],
                             std: Sequence[float]) -> v2.Compose:
    """Shorter side ``min_size``, longer side at most ``max_size``. With ``max_size <= min_size``
    (ViTDet evaluates at 1024, 1024) the longer side decides alone, which v2.Resize takes as size None."""
    resize = v2.Resize(min_size, max_size=max_size) if max_size > min_size else v2.Resize(None, max_size=max_size)
    return v2.Compose([v2.ToImage(), PadThinImage(min_long_side=max_size), resize, *_normalise(mean, std)])
