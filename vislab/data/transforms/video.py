"""Video clip transforms, PySlowFast's (``slowfast/datasets/transform.py``): uint8 frames
``[T, H, W, 3]`` in, normalised float ``[3, T, H, W]`` out.

Training: scale the shorter side to a size drawn uniformly from ``short_side_range``, take a
random square crop and flip it horizontally half of the time (Feichtenhofer et al., 2019, Sec. 4:
"a 224x224 crop is randomly sampled from a video, or its horizontal flip, with a shorter side
randomly sampled in [256, 320] pixels"). Testing: scale the shorter side to ``short_side`` and
take ``num_crops`` crops spread along the longer side (3: left/centre/right or
top/centre/bottom, PySlowFast's ``uniform_crop``; 1: the centre). Resizing is bilinear without
antialiasing, as in PySlowFast. Random draws come from torch's default generator.
"""
from __future__ import annotations

import math
from functools import partial
from typing import Callable, Sequence

import torch
import torch.nn.functional as F


def to_float_frames(frames: torch.Tensor) -> torch.Tensor:
    """uint8 ``[T, H, W, 3]`` -> float ``[T, 3, H, W]`` in [0, 1]."""
    if frames.dtype != torch.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"expected uint8 frames [T, H, W, 3], got {frames.dtype} {list(frames.shape)}")
    return frames.permute(0, 3, 1, 2).float().div_(255)


def scale_short_side(frames: torch.Tensor, *, size: int) -> torch.Tensor:
    """Scale ``[T, 3, H, W]`` so its shorter side is ``size``, the longer one floor-rounded."""
    height, width = frames.shape[-2:]
    if min(height, width) == size:
        return frames
    if width < height:
        new_size = (int(math.floor(height / width * size)), size)
    else:
        new_size = (size, int(math.floor(width / height * size)))
    return F.interpolate(frames, size=new_size, mode="bilinear", align_corners=False)


def normalise_clip(frames: torch.Tensor, *, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """``[T, 3, h, w]`` -> normalised ``[3, T, h, w]``."""
    return ((frames - mean) / std).permute(1, 0, 2, 3).contiguous()


def channel_values(values: Sequence[float], *, name: str) -> torch.Tensor:
    if len(values) != 3:
        raise ValueError(f"{name} needs one value per RGB channel, got {list(values)}")
    return torch.tensor(values, dtype=torch.float32).view(1, 3, 1, 1)


def _train_clip(frames: torch.Tensor, *, crop_size: int, short_side_range: tuple[int, int], hflip: bool,
                mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    short_side = int(torch.randint(short_side_range[0], short_side_range[1] + 1, ()))
    clip = scale_short_side(to_float_frames(frames), size=short_side)
    height, width = clip.shape[-2:]
    top = int(torch.randint(0, height - crop_size + 1, ()))
    left = int(torch.randint(0, width - crop_size + 1, ()))
    clip = clip[..., top:top + crop_size, left:left + crop_size]
    if hflip and torch.rand(()) < 0.5:
        clip = clip.flip(-1)
    return normalise_clip(clip, mean=mean, std=std)


def _crop_offsets(*, height: int, width: int, crop_size: int, num_crops: int) -> list[tuple[int, int]]:
    """``(top, left)`` of each crop: centred across the shorter side and spread from start to end
    along the longer one (along the width of a square, as ``uniform_crop``); one crop is centred."""
    top, left = math.ceil((height - crop_size) / 2), math.ceil((width - crop_size) / 2)
    if num_crops == 1:
        return [(top, left)]
    spread = [math.ceil(i * (max(height, width) - crop_size) / (num_crops - 1)) for i in range(num_crops)]
    if height > width:
        return [(offset, left) for offset in spread]
    return [(top, offset) for offset in spread]


def _test_views(frames: torch.Tensor, *, crop_size: int, short_side: int, num_crops: int,
                mean: torch.Tensor, std: torch.Tensor) -> list[torch.Tensor]:
    clip = scale_short_side(to_float_frames(frames), size=short_side)
    height, width = clip.shape[-2:]
    return [normalise_clip(clip[..., top:top + crop_size, left:left + crop_size], mean=mean, std=std)
            for top, left in _crop_offsets(height=height, width=width, crop_size=crop_size, num_crops=num_crops)]


def jitter_range(short_side_range: Sequence[int], *, crop_size: int) -> tuple[int, int]:
    """``(low, high)`` of a short-side jitter, checked to be ordered and to fit ``crop_size``."""
    low, high = short_side_range
    if not crop_size <= low <= high:
        raise ValueError(f"short_side_range {list(short_side_range)} must be ordered and start at or above "
                         f"crop_size {crop_size}")
    return low, high


def video_train_transform(*, crop_size: int, short_side_range: Sequence[int] = (256, 320), hflip: bool = True,
                          mean: Sequence[float], std: Sequence[float]) -> Callable[[torch.Tensor], torch.Tensor]:
    """uint8 ``[T, H, W, 3]`` -> one randomly scaled, cropped and flipped clip ``[3, T, crop, crop]``."""
    return partial(_train_clip, crop_size=crop_size,
                   short_side_range=jitter_range(short_side_range, crop_size=crop_size), hflip=hflip,
                   mean=channel_values(mean, name="mean"), std=channel_values(std, name="std"))


def video_test_views(*, crop_size: int, short_side: int, num_crops: int = 3, mean: Sequence[float],
                     std: Sequence[float]) -> Callable[[torch.Tensor], list[torch.Tensor]]:
    """uint8 ``[T, H, W, 3]`` -> ``num_crops`` clips ``[3, T, crop, crop]``: with 3, the start,
    centre and end of the longer side (left/centre/right or top/centre/bottom), with 1 the centre."""
    if short_side < crop_size:
        raise ValueError(f"short_side {short_side} is smaller than crop_size {crop_size}")
    if num_crops < 1:
        raise ValueError(f"num_crops must be >= 1, got {num_crops}")
    return partial(_test_views, crop_size=crop_size, short_side=short_side, num_crops=num_crops,
                   mean=channel_values(mean, name="mean"), std=channel_values(std, name="std"))
