"""Which frames make a clip: ``num_frames`` frames ``stride`` apart (SlowFast's T x tau).

A clip spans ``(num_frames - 1) * stride + 1`` frames; stride 0 repeats one frame, a static clip
(the single-frame control of a temporal-modelling study). Indices past the end of a shorter video
are clamped to its last frame, as PySlowFast's ``temporal_sampling`` does.
"""
from __future__ import annotations

import torch


def _check(*, num_frames_video: int, num_frames: int, stride: int) -> int:
    """The clip's span, after checking the arguments."""
    if num_frames_video < 1:
        raise ValueError(f"num_frames_video must be >= 1, got {num_frames_video}")
    if num_frames < 1 or stride < 0:
        raise ValueError(f"num_frames must be >= 1 and stride >= 0, got num_frames={num_frames}, stride={stride}")
    return (num_frames - 1) * stride + 1


def _clip(start: int, *, num_frames_video: int, num_frames: int, stride: int) -> list[int]:
    return [min(start + i * stride, num_frames_video - 1) for i in range(num_frames)]


def train_clip_indices(*, num_frames_video: int, num_frames: int, stride: int,
                       generator: torch.Generator | None = None) -> list[int]:
    """One clip starting at a uniformly random frame (``generator``, or torch's default one)."""
    span = _check(num_frames_video=num_frames_video, num_frames=num_frames, stride=stride)
    latest_start = max(num_frames_video - span, 0)
    start = int(torch.randint(0, latest_start + 1, (), generator=generator))
    return _clip(start, num_frames_video=num_frames_video, num_frames=num_frames, stride=stride)


def test_clip_indices(*, num_frames_video: int, num_frames: int, stride: int, num_clips: int) -> list[list[int]]:
    """``num_clips`` clips at uniformly spaced starts from the first to the last possible one
    (clip ``i`` starts at ``i * (num_frames_video - span) / (num_clips - 1)``, rounded), or the
    centred clip when ``num_clips`` is 1: PySlowFast's multi-view testing (Feichtenhofer et al.,
    2019, Sec. 4)."""
    span = _check(num_frames_video=num_frames_video, num_frames=num_frames, stride=stride)
    if num_clips < 1:
        raise ValueError(f"num_clips must be >= 1, got {num_clips}")
    latest_start = max(num_frames_video - span, 0)
    if num_clips == 1:
        starts = [latest_start // 2]
    else:
        starts = [round(i * latest_start / (num_clips - 1)) for i in range(num_clips)]
    return [_clip(start, num_frames_video=num_frames_video, num_frames=num_frames, stride=stride) for start in starts]


def keyframe_clip_indices(*, keyframe: int, num_frames_video: int, num_frames: int, stride: int) -> list[int]:
    """The clip centred on an annotated keyframe (AVA): ``num_frames`` frames ``stride`` apart
    starting ``num_frames * stride // 2`` frames before it, clamped to the video's frames, as
    PySlowFast's ``ava_helper.get_sequence`` takes them. Stride 0 repeats the keyframe."""
    _check(num_frames_video=num_frames_video, num_frames=num_frames, stride=stride)
    start = keyframe - num_frames * stride // 2
    return [min(max(start + i * stride, 0), num_frames_video - 1) for i in range(num_frames)]
