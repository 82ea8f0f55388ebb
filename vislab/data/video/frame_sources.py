"""Where an action-detection set's frames come from: JPEG folders named by PySlowFast frame lists
(AVA's extracted frames), or one video file per video id read with PyAV."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from vislab.data.datasets.image_folder import DataError, read_rgb
from vislab.data.video.decode import VideoReader

VIDEO_SUFFIXES = (".mp4", ".mkv", ".webm", ".avi", ".mov")


class FrameFolders:
    """Frames as listed by a frame list: ``video id -> [frame paths in frame order]``."""

    def __init__(self, frames: dict[str, list[Path]], *, list_file: str | os.PathLike):
        self.frames = frames
        self.list_file = Path(list_file)

    def __contains__(self, video: str) -> bool:
        return video in self.frames

    def num_frames(self, video: str) -> int:
        return len(self.frames[video])

    def read(self, video: str, indices: Sequence[int]) -> torch.Tensor:
        """uint8 ``[len(indices), H, W, 3]``; each distinct frame is decoded once (``read_rgb``:
        an unreadable frame is a ``BadImageError`` naming it)."""
        decoded = {index: torch.from_numpy(np.array(read_rgb(self.frames[video][index])))
                   for index in dict.fromkeys(indices)}
        return torch.stack([decoded[i] for i in indices])

    def describe(self) -> str:
        return f"frame list {self.list_file}"


class VideoFiles:
    """``folder/<video id>.<mp4|mkv|webm|...>``, decoded with PyAV (``VideoReader``)."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise DataError(f"video folder {self.folder} does not exist")
        self.paths = {path.stem: path for path in sorted(self.folder.iterdir()) if path.suffix in VIDEO_SUFFIXES}
        self._counts: dict[str, int] = {}

    def __contains__(self, video: str) -> bool:
        return video in self.paths

    def num_frames(self, video: str) -> int:
        if video not in self._counts:
            with VideoReader(self.paths[video]) as reader:
                self._counts[video] = reader.num_frames
        return self._counts[video]

    def read(self, video: str, indices: Sequence[int]) -> torch.Tensor:
        with VideoReader(self.paths[video]) as reader:
            return reader.frames(list(indices))

    def describe(self) -> str:
        return f"video folder {self.folder}"


FrameSource = FrameFolders | VideoFiles


def missing_videos(source: FrameSource, videos: Sequence[str], *, named_in: str | os.PathLike) -> None:
    """Raise ``DataError`` naming ``named_in`` and a few videos it annotates that ``source`` lacks."""
    missing = sorted({video for video in videos if video not in source})
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise DataError(f"{named_in} annotates {len(missing)} video(s) that {source.describe()} does not have: {shown}")

