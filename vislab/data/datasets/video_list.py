"""Videos named in a Kinetics-style list file, decoded into clips on demand."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import torch
from torch.utils.data import Dataset

from vislab.data.file_checks import report_bad_files
from vislab.data.video.decode import VideoDecodeError, VideoReader, video_frame_count
from vislab.data.video.lists import read_video_list
from vislab.data.video.sampling import test_clip_indices, train_clip_indices

CLASS_NAMES_FILE = "classes.txt"


class VideoListDataset(Dataset):
    """``(clip [3, T, H, W], label)`` for training: one clip at a random start, transformed by
    ``transform`` (e.g. ``video_train_transform``); ``(views [num_clips * crops, 3, T, H, W],
    label)`` for evaluation: ``num_clips`` uniformly spaced clips, each turned into its crops by
    ``transform`` (e.g. ``video_test_views``), clip-major.

    The dataset samples and transforms clips itself with torch's default generator: wrap it in
    ``SeededSamples(dataset, None)``, which reads it under the per-sample seed. ``classes`` are
    the lines of ``root/classes.txt`` if it exists, else the label ids as strings; a label beyond
    them or ``num_classes`` is an error naming its line. With
    ``skip_bad`` an undecodable video yields None and counts in ``skipped`` (in the process that
    read it: with loader workers, count the None samples instead); otherwise it raises
    ``VideoDecodeError`` naming the file.
    """

    def __init__(self, *, list_file: str | os.PathLike, root: str | os.PathLike, train: bool, num_frames: int,
                 stride: int, transform: Callable, num_clips: int = 1, skip_bad: bool = False,
                 num_classes: int | None = None):
        if train and num_clips != 1:
            raise ValueError(f"training samples one clip per video; num_clips={num_clips} is for evaluation")
        names = _class_names(Path(root))
        bounds = [n for n in (num_classes, len(names) if names else None) if n]
        self.samples = read_video_list(list_file, root=root, num_labels=min(bounds) if bounds else None)
        self.labels = [label for _, label in self.samples]
        self.classes = names or [str(label) for label in range(max(self.labels) + 1)]
        self.train = train
        self.num_frames = num_frames
        self.stride = stride
        self.transform = transform
        self.num_clips = num_clips
        self.skip_bad = skip_bad
        self.skipped = 0

    def __len__(self) -> int:
        return len(self.samples)

    def check_files(self) -> None:
        """Every video's container and frame count, before a run relies on them."""
        problems = []
        for path, _ in self.samples:
            try:
                video_frame_count(path)
            except VideoDecodeError as exc:
                problems.append(str(exc))
        report_bad_files(problems, what="video", skip_bad=self.skip_bad, error=VideoDecodeError)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int] | None:
        path, label = self.samples[index]
        try:
            frames = self._decode(path)
        except VideoDecodeError:
            if self.skip_bad:
                self.skipped += 1
                return None
            raise
        if self.train:
            return self.transform(frames), label
        views = [view for clip in frames.split(self.num_frames) for view in self.transform(clip)]
        return torch.stack(views), label

    def _decode(self, path: Path) -> torch.Tensor:
        """The clip's frames, or every evaluation clip's frames one after another, decoded in one pass."""
        with VideoReader(path) as video:
            clip = dict(num_frames_video=video.num_frames, num_frames=self.num_frames, stride=self.stride)
            if self.train:
                return video.frames(train_clip_indices(**clip))
            return video.frames([i for indices in test_clip_indices(**clip, num_clips=self.num_clips) for i in indices])


def _class_names(root: Path) -> list[str] | None:
    """The lines of ``root/classes.txt``, or None without one."""
    names_file = root / CLASS_NAMES_FILE
    if not names_file.is_file():
        return None
    return [line.strip() for line in names_file.read_text().splitlines() if line.strip()]
