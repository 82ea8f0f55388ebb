"""Decoding chosen frames of a video with PyAV, seeking instead of decoding from the start.

Frame ``i`` is the frame shown at time ``i / fps`` (``fps`` the stream's average rate), as in
PySlowFast's ``pyav_decode``: a clip of a long video seeks to the key frame at or before its
first frame, decodes forward and stops at its last frame.
"""
from __future__ import annotations

import os
from fractions import Fraction
from pathlib import Path
from typing import Sequence

import av
import numpy as np
import torch

from vislab.data.datasets.image_folder import DataError


class VideoDecodeError(DataError):
    """A video file that is missing, unreadable or holds no frames."""


_AV_ERRORS = (av.FFmpegError, OSError, ValueError, IndexError)


class VideoReader:
    """An open video file: its frame count, frame rate, and decoding of chosen frames.

    Use as a context manager; every error names the file as ``VideoDecodeError``.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        try:
            self._container = av.open(str(self.path))
        except _AV_ERRORS as exc:
            raise VideoDecodeError(f"cannot open video {self.path}: {exc}") from exc
        try:
            streams = self._container.streams.video
            if not streams:
                raise VideoDecodeError(f"video {self.path} has no video stream")
            self._stream = streams[0]
            rate = self._stream.average_rate or self._stream.guessed_rate
            if not rate:
                raise VideoDecodeError(f"video {self.path} has no frame rate")
            self.fps = Fraction(rate)
            self.num_frames = self._count_frames()
            if self.num_frames < 1:
                raise VideoDecodeError(f"video {self.path} has no frames")
        except BaseException:
            self._container.close()
            raise

    def __enter__(self) -> "VideoReader":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def close(self) -> None:
        self._container.close()

    def _count_frames(self) -> int:
        """The container's frame count, else its duration times the frame rate, else (a
        container that records neither) the number of video packets."""
        stream = self._stream
        if stream.frames:
            return stream.frames
        if stream.duration and stream.time_base:
            return round(stream.duration * stream.time_base * self.fps)
        if self._container.duration:
            return round(Fraction(self._container.duration, av.time_base) * self.fps)
        try:
            count = sum(packet.size > 0 for packet in self._container.demux(stream))
            self._container.seek(0, stream=stream)
        except _AV_ERRORS as exc:
            raise VideoDecodeError(f"cannot read video {self.path}: {exc}") from exc
        return count

    def _frame_index(self, frame: av.VideoFrame) -> int:
        start = self._stream.start_time or 0
        return round((frame.pts - start) * self._stream.time_base * self.fps)

    def frames(self, indices: Sequence[int]) -> torch.Tensor:
        """uint8 ``[len(indices), H, W, 3]`` RGB frames, in the order of ``indices`` (which may
        repeat); indices past the end give the last frame."""
        if len(indices) == 0:
            raise ValueError("decode at least one frame: indices is empty")
        if min(indices) < 0:
            raise ValueError(f"frame indices must be >= 0, got {min(indices)}")
        wanted = sorted({min(i, self.num_frames - 1) for i in indices})
        try:
            found = self._decode(wanted)
        except _AV_ERRORS as exc:
            raise VideoDecodeError(f"cannot decode video {self.path}: {exc}") from exc
        if not found:
            raise VideoDecodeError(f"video {self.path} decoded no frames")
        arrays = {index: frame.to_ndarray(format="rgb24") for index, frame in found.items()}
        return torch.from_numpy(np.stack([arrays[min(i, self.num_frames - 1)] for i in indices]))

    def _decode(self, wanted: list[int]) -> dict[int, av.VideoFrame]:
        """Each wanted index mapped to the frame on screen at its time: the last decoded frame
        whose index is at most it (the first decoded frame for an index before every frame, the
        last one for an index past the frames the stream holds, when its metadata counts more)."""
        stream = self._stream
        start = stream.start_time or 0
        self._container.seek(start + int(wanted[0] / self.fps / stream.time_base), stream=stream,
                             any_frame=False, backward=True)
        found, pending, previous = {}, iter(wanted), None
        index = next(pending)
        for frame in self._container.decode(stream):
            if frame.pts is None:
                continue
            position = self._frame_index(frame)
            while index is not None and index <= position:
                found[index] = frame if position == index or previous is None else previous
                index = next(pending, None)
            if index is None:
                break
            previous = frame
        if index is not None and previous is not None:  # the stream ended first
            found.update({i: previous for i in [index, *pending]})
        return found


def decode_frames(path: str | os.PathLike, *, indices: Sequence[int]) -> torch.Tensor:
    """uint8 ``[len(indices), H, W, 3]``: the frames ``indices`` of the video at ``path``."""
    with VideoReader(path) as video:
        return video.frames(indices)


def video_frame_count(path: str | os.PathLike) -> int:
    with VideoReader(path) as video:
        return video.num_frames
