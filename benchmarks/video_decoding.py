"""Clip decoding for ``benchmarks/video.py``: vislab's ``VideoListDataset`` against pytorchvideo's
``EncodedVideo`` on generated moving-shapes mp4s (see that script's docstring)."""
from __future__ import annotations

import statistics
import sys
import tempfile
from fractions import Fraction
from functools import partial
from pathlib import Path
from typing import Any, Callable

import torch

from vislab.config import load_config
from vislab.data.datasets.moving_shapes import FPS
from vislab.data.datasets.video_list import VideoListDataset
from vislab.data.video.sampling import test_clip_indices, train_clip_indices
from vislab.tasks.video import video_dataset

sys.path.insert(0, str(Path(__file__).resolve().parent))
import train_bench  # noqa: E402

SEED = 0
MOVING_SHAPES_RECIPE = Path(__file__).resolve().parent.parent / "configs/video/moving_shapes_slowfast.yaml"
DATA_MODES = {"train": "train", "eval": "val"}  # mode -> split of the moving-shapes set


def pytorchvideo_frames(video: Any, indices: list[int], *, fps: int) -> torch.Tensor:
    """uint8 ``[T, H, W, 3]`` frames ``indices`` (ascending) of an ``EncodedVideo``, as
    ``VideoReader.frames`` gives them: ``get_clip`` decodes the frames of their time span
    (float ``[3, n, H, W]``, 0-255), of which the clip's are taken."""
    first, last = indices[0], indices[-1]
    span = video.get_clip(Fraction(first, fps), Fraction(last + 1, fps))["video"]
    positions = torch.tensor([index - first for index in indices])
    return span.index_select(1, positions).permute(1, 2, 3, 0).to(torch.uint8)


def pytorchvideo_sample(dataset: VideoListDataset, index: int, *, encoded_video: type,
                        fps: int) -> tuple[torch.Tensor, int]:
    """``dataset[index]`` with the clips decoded by pytorchvideo's ``EncodedVideo``: the same
    clip indices and transform, drawn from torch's default generator in the same order."""
    path, label = dataset.samples[index]
    video = encoded_video.from_path(str(path), decode_audio=False, decoder="pyav")
    try:
        clip = dict(num_frames_video=round(video.duration * fps), num_frames=dataset.num_frames,
                    stride=dataset.stride)
        if dataset.train:
            return dataset.transform(pytorchvideo_frames(video, train_clip_indices(**clip), fps=fps)), label
        clips = [pytorchvideo_frames(video, indices, fps=fps)
                 for indices in test_clip_indices(**clip, num_clips=dataset.num_clips)]
    finally:
        video.close()
    return torch.stack([view for frames in clips for view in dataset.transform(frames)]), label


def decoded_clips_per_second(read: Callable[[int], tuple[torch.Tensor, int]], *, videos: int, clips: int) -> float:
    """``clips`` over the time ``read`` takes for videos ``0..videos-1``, from torch's seed ``SEED``."""
    def read_all() -> None:
        torch.manual_seed(SEED)
        for index in range(videos):
            read(index)

    return clips / train_bench.elapsed_seconds(read_all, device=torch.device("cpu"))


def check_same_clips(readers: dict[str, Callable[[int], tuple[torch.Tensor, int]]], *, mode: str) -> None:
    samples = {}
    for side, read in readers.items():
        torch.manual_seed(SEED)
        samples[side] = read(0)[0]
    if not torch.equal(samples["vislab"], samples["pytorchvideo"]):
        raise RuntimeError(f"{mode}: vislab and pytorchvideo decode different clips from the first video")


def decoding_readers(dataset: VideoListDataset) -> tuple[dict[str, Callable], str | None]:
    """vislab's reader and, if pytorchvideo's ``EncodedVideo`` imports, the reference; else why not."""
    readers = {"vislab": dataset.__getitem__}
    try:
        from pytorchvideo.data.encoded_video import EncodedVideo
    except ImportError as error:
        return readers, f"pytorchvideo.data.encoded_video does not import: {error}"
    readers["pytorchvideo"] = partial(pytorchvideo_sample, dataset, encoded_video=EncodedVideo, fps=FPS)
    return readers, None


def measure_decoding(*, videos: int, rounds: int) -> dict:
    """Clips/s of vislab's video pipeline and of the reference, per mode, over generated clips."""
    results = {}
    with tempfile.TemporaryDirectory(prefix="vislab-video-bench-") as folder:
        cfg = load_config(MOVING_SHAPES_RECIPE, overrides=[f"data.root={Path(folder) / 'moving_shapes'}",
                                                           f"data.synthetic_train={videos}",
                                                           f"data.synthetic_val={videos}"])
        for mode, split in DATA_MODES.items():
            dataset = video_dataset(cfg, split)
            readers, unavailable = decoding_readers(dataset)
            if unavailable is None:
                check_same_clips(readers, mode=mode)
            rates = train_bench.interleaved_rounds(
                {side: partial(decoded_clips_per_second, read, videos=len(dataset),
                               clips=len(dataset) * dataset.num_clips)
                 for side, read in readers.items()}, rounds=rounds)
            if unavailable is None:
                summary = train_bench.median_ratio(rates)
            else:
                summary = {"clips_per_second": rates, "reference_unavailable": unavailable,
                           "median_clips_per_second": {"vislab": statistics.median(rates["vislab"])}}
            results[mode] = {"videos": len(dataset), "clips_per_video": dataset.num_clips,
                             "frames": dataset.num_frames, "stride": dataset.stride, **summary}
    return results
