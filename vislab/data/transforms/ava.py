"""Clip-and-box transforms for actor-centric action detection (AVA), PySlowFast's
(``slowfast/datasets/ava_dataset.py`` with ``cv2_transform``): uint8 frames ``[T, H, W, 3]`` and
boxes normalised to [0, 1] in, a normalised float clip ``[3, T, h, w]`` and boxes in its pixels out.

Training: scale the shorter side to a size drawn uniformly from ``short_side_range``, take a
random square crop and flip half of the time, moving the boxes with the frames and clipping them
to the crop (Feichtenhofer et al., 2019, Sec. 5: "we use ... scale jittering ... and random
crops of 224 pixels"). Testing: the full frame with its shorter side at ``short_side``
(PySlowFast's ``AVA.TEST_FORCE_FLIP`` off, no crop), or its centre square. Boxes are continuous coordinates, so a flip
maps ``x`` to ``width - x``. Random draws come from torch's default generator.
"""
from __future__ import annotations

from functools import partial
from typing import Callable, Sequence

import torch

from vislab.data.transforms.video import (channel_values, jitter_range, normalise_clip, scale_short_side,
                                          to_float_frames)

ClipAndBoxes = tuple[torch.Tensor, torch.Tensor]


def _scaled(frames: torch.Tensor, boxes: torch.Tensor, *, short_side: int) -> ClipAndBoxes:
    """Float ``[T, 3, h, w]`` with its shorter side ``short_side``, and the boxes in its pixels."""
    clip = scale_short_side(to_float_frames(frames), size=short_side)
    height, width = clip.shape[-2:]
    return clip, boxes * torch.tensor([width, height, width, height], dtype=torch.float32)


def _train(frames: torch.Tensor, boxes: torch.Tensor, *, crop_size: int, short_side_range: tuple[int, int],
           hflip: bool, mean: torch.Tensor, std: torch.Tensor) -> ClipAndBoxes:
    short_side = int(torch.randint(short_side_range[0], short_side_range[1] + 1, ()))
    clip, boxes = _scaled(frames, boxes, short_side=short_side)
    height, width = clip.shape[-2:]
    top = int(torch.randint(0, height - crop_size + 1, ()))
    left = int(torch.randint(0, width - crop_size + 1, ()))
    clip, boxes = _crop(clip, boxes, top=top, left=left, size=crop_size)
    if hflip and torch.rand(()) < 0.5:
        clip = clip.flip(-1)
        boxes = torch.stack([crop_size - boxes[:, 2], boxes[:, 1], crop_size - boxes[:, 0], boxes[:, 3]], dim=1)
    return normalise_clip(clip, mean=mean, std=std), boxes


def _crop(clip: torch.Tensor, boxes: torch.Tensor, *, top: int, left: int, size: int) -> ClipAndBoxes:
    """The ``size`` square at (top, left) and the boxes moved into it, clipped to its sides."""
    clip = clip[..., top:top + size, left:left + size]
    return clip, (boxes - torch.tensor([left, top, left, top], dtype=torch.float32)).clamp(0, size)


def _test(frames: torch.Tensor, boxes: torch.Tensor, *, short_side: int, centre_crop: bool, mean: torch.Tensor,
          std: torch.Tensor) -> ClipAndBoxes:
    clip, boxes = _scaled(frames, boxes, short_side=short_side)
    if centre_crop:
        height, width = clip.shape[-2:]
        clip, boxes = _crop(clip, boxes, top=(height - short_side) // 2, left=(width - short_side) // 2,
                            size=short_side)
    return normalise_clip(clip, mean=mean, std=std), boxes


def actor_train_transform(*, crop_size: int, short_side_range: Sequence[int], hflip: bool, mean: Sequence[float],
                          std: Sequence[float]) -> Callable[[torch.Tensor, torch.Tensor], ClipAndBoxes]:
    """``(frames, normalised boxes [N, 4])`` -> one scaled, cropped and maybe flipped clip
    ``[3, T, crop, crop]`` and its boxes ``[N, 4]`` in crop pixels (a box the crop cuts away
    keeps zero width, as PySlowFast's ``clip_boxes_to_image`` leaves it)."""
    return partial(_train, crop_size=crop_size, short_side_range=jitter_range(short_side_range, crop_size=crop_size),
                   hflip=hflip, mean=channel_values(mean, name="mean"), std=channel_values(std, name="std"))


def actor_test_transform(*, short_side: int, mean: Sequence[float], std: Sequence[float],
                         centre_crop: bool = False) -> Callable[[torch.Tensor, torch.Tensor], ClipAndBoxes]:
    """``(frames, normalised boxes [N, 4])`` -> the whole clip with its shorter side at
    ``short_side`` and the boxes in its pixels; with ``centre_crop`` only its centre square
    (for models whose input size is fixed, e.g. MViT's position tables: the MViTv2 paper's AVA
    "centre crop" protocol), boxes clipped to it."""
    return partial(_test, short_side=short_side, centre_crop=centre_crop, mean=channel_values(mean, name="mean"),
                   std=channel_values(std, name="std"))
