"""Video data: list files, clip sampling, seeking PyAV decoding, the moving-shapes generator, the
video transforms, VideoListDataset and `vislab data moving-shapes`."""
from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from vislab.cli import main
from vislab.data.datasets.image_folder import DataError
from vislab.data.datasets.moving_shapes import MOTIONS, draw_clip, ensure_moving_shapes, generate_moving_shapes
from vislab.data.datasets.video_list import VideoListDataset
from vislab.data.sampler import SeededSamples
from vislab.data.transforms.video import video_test_views, video_train_transform
from vislab.data.video import sampling
from vislab.data.video.decode import VideoDecodeError, VideoReader, decode_frames, video_frame_count
from vislab.data.video.encode import KEYFRAME_INTERVAL, write_mp4
from vislab.data.video.lists import read_video_list

MEAN, STD = (0.45, 0.45, 0.45), (0.225, 0.225, 0.225)
RAMP_FRAMES, RAMP_STEP = 40, 6


def _pytorchvideo_transforms():
    """``pytorchvideo.transforms.functional`` loaded on its own: the package's ``__init__``
    imports ``torchvision.transforms.functional_tensor``, which torchvision 0.17 removed."""
    path = Path(importlib.util.find_spec("pytorchvideo").origin).parent / "transforms" / "functional.py"
    spec = importlib.util.spec_from_file_location("pytorchvideo_transforms_functional", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def moving(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("moving") / "set"
    generate_moving_shapes(root, train=8, val=2, seed=0)
    return root


@pytest.fixture(scope="module")
def ramp(tmp_path_factory) -> Path:
    """A 40-frame mp4 whose frame i is flat grey 6 * i: a decoded frame tells its own index."""
    levels = np.arange(RAMP_FRAMES, dtype=np.uint8) * RAMP_STEP
    path = tmp_path_factory.mktemp("ramp") / "ramp.mp4"
    write_mp4(path, np.broadcast_to(levels[:, None, None, None], (RAMP_FRAMES, 16, 24, 3)).copy(), fps=10)
    return path


def _shown_indices(frames: torch.Tensor) -> list[int]:
    return (frames.float().mean(dim=(1, 2, 3)) / RAMP_STEP).round().int().tolist()


def test_list_parsing_paths_labels_comments_and_separators(tmp_path):
    (tmp_path / "list.txt").write_text("# kinetics\n\na.mp4 3\nsub dir/b c.mp4,1\n  d.mp4 , 0  \ne,f.mp4\t2\n")
    assert read_video_list(tmp_path / "list.txt", root=tmp_path / "videos") == [
        (tmp_path / "videos" / "a.mp4", 3), (tmp_path / "videos" / "sub dir/b c.mp4", 1),
        (tmp_path / "videos" / "d.mp4", 0), (tmp_path / "videos" / "e,f.mp4", 2)]


@pytest.mark.parametrize("bad_line, message", [("c.mp4", "line 3: 'c.mp4' has no label"),
                                               ("c.mp4 cat", "line 3: label 'cat' is not an integer"),
                                               ("c.mp4,-1", "line 3: label -1 is negative")])
def test_list_bad_lines_name_the_file_and_line(tmp_path, bad_line, message):
    path = tmp_path / "list.csv"
    path.write_text(f"a.mp4,0\n# note\n{bad_line}\n")
    with pytest.raises(DataError, match=f"{path} {message}"):
        read_video_list(path, root=tmp_path)


def test_out_of_range_label_names_its_line(tmp_path):
    path = tmp_path / "val.csv"
    path.write_text("a.mp4,0\nb.mp4,2\nc.mp4,5\n")
    with pytest.raises(DataError, match=rf"{path} line 3: label 5 is out of range: there are 3 classes"):
        read_video_list(path, root=tmp_path, num_labels=3)
    (tmp_path / "classes.txt").write_text("walk\nrun\njump\n")
    with pytest.raises(DataError, match=rf"{path} line 3: label 5 is out of range"):
        VideoListDataset(list_file=path, root=tmp_path, train=False, num_frames=4, stride=1, transform=None)
    with pytest.raises(DataError, match=rf"{path} line 2: label 2 is out of range: there are 2 classes"):
        VideoListDataset(list_file=path, root=tmp_path, train=False, num_frames=4, stride=1, transform=None,
                         num_classes=2)


def test_list_missing_or_empty(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        read_video_list(tmp_path / "none.csv", root=tmp_path)
    (tmp_path / "empty.csv").write_text("# nothing\n\n")
    with pytest.raises(DataError, match="lists no videos"):
        read_video_list(tmp_path / "empty.csv", root=tmp_path)


def test_train_clip_indices_are_strided_in_bounds_and_cover_every_start():
    generator = torch.Generator().manual_seed(0)
    starts = set()
    for _ in range(300):
        clip = sampling.train_clip_indices(num_frames_video=40, num_frames=8, stride=4, generator=generator)
        assert len(clip) == 8 and np.all(np.diff(clip) == 4) and 0 <= clip[0] and clip[-1] <= 39
        starts.add(clip[0])
    assert starts == set(range(40 - 29 + 1))  # span 29: starts 0..11, each drawn
    torch.manual_seed(3)
    first = sampling.train_clip_indices(num_frames_video=40, num_frames=8, stride=4)
    torch.manual_seed(3)
    assert sampling.train_clip_indices(num_frames_video=40, num_frames=8, stride=4) == first  # default generator


def test_short_videos_start_at_zero_and_clamp_to_the_last_frame():
    assert sampling.train_clip_indices(num_frames_video=10, num_frames=4, stride=4) == [0, 4, 8, 9]
    clips = sampling.test_clip_indices(num_frames_video=10, num_frames=4, stride=4, num_clips=3)
    assert clips == [[0, 4, 8, 9]] * 3


def test_test_clip_indices_spread_from_first_to_last_start():
    clips = sampling.test_clip_indices(num_frames_video=100, num_frames=8, stride=4, num_clips=3)
    assert [clip[0] for clip in clips] == [0, 36, 71] and clips[-1][-1] == 99
    assert all(np.all(np.diff(clip) == 4) for clip in clips)
    starts = [clip[0] for clip in sampling.test_clip_indices(num_frames_video=300, num_frames=8, stride=8,
                                                             num_clips=10)]
    assert starts[0] == 0 and starts[-1] == 300 - 57 and max(np.diff(starts)) - min(np.diff(starts)) <= 1
    (centre,) = sampling.test_clip_indices(num_frames_video=100, num_frames=8, stride=4, num_clips=1)
    assert centre[0] == 35 and centre[0] + centre[-1] == 99 - 1  # centred up to rounding
    with pytest.raises(ValueError, match="num_clips"):
        sampling.test_clip_indices(num_frames_video=100, num_frames=8, stride=4, num_clips=0)


def test_decode_gives_the_frames_asked_for_in_order_with_repeats_and_clamping(ramp):
    assert video_frame_count(ramp) == RAMP_FRAMES
    everything = decode_frames(ramp, indices=range(RAMP_FRAMES))
    assert everything.shape == (RAMP_FRAMES, 16, 24, 3) and everything.dtype == torch.uint8
    assert _shown_indices(everything) == list(range(RAMP_FRAMES))
    for indices in ([0], [17, 17, 3, 30], [39, 45, 100], [8, 9, 15, 16, 24], [31, 0, 38]):
        frames = decode_frames(ramp, indices=indices)
        assert _shown_indices(frames) == [min(i, RAMP_FRAMES - 1) for i in indices]
        assert torch.equal(frames, everything[[min(i, RAMP_FRAMES - 1) for i in indices]])
    with VideoReader(ramp) as video:
        video.num_frames = RAMP_FRAMES + 5  # metadata that counts frames the stream lacks
        assert _shown_indices(video.frames([42, 3, 39])) == [39, 3, 39]


def test_decode_seeks_instead_of_decoding_from_the_start(ramp, monkeypatch):
    decoded = []
    frame_index = VideoReader._frame_index
    monkeypatch.setattr(VideoReader, "_frame_index", lambda self, frame: decoded.append(1) or frame_index(self, frame))
    assert _shown_indices(decode_frames(ramp, indices=[33, 34])) == [33, 34]
    assert len(decoded) <= KEYFRAME_INTERVAL + 2  # from the key frame before 33, not 35 frames
    decoded.clear()
    decode_frames(ramp, indices=[1, 2])
    assert len(decoded) == 3  # stops at the last frame asked for


def test_unreadable_videos_raise_naming_the_file(tmp_path, ramp):
    (tmp_path / "text.mp4").write_text("not a video")
    (tmp_path / "cut.mp4").write_bytes(ramp.read_bytes()[:300])
    for path in (tmp_path / "text.mp4", tmp_path / "cut.mp4", tmp_path / "missing.mp4"):
        with pytest.raises(VideoDecodeError, match=str(path)):
            decode_frames(path, indices=[0])
    with pytest.raises(ValueError, match="indices"):
        decode_frames(ramp, indices=[])


def test_generated_set_layout_and_decoded_clips(moving):
    lines = (moving / "train.csv").read_text().splitlines()
    assert lines[:2] == ["videos/train_000000.mp4,0", "videos/train_000001.mp4,1"] and len(lines) == 8
    assert (moving / "classes.txt").read_text().split() == list(MOTIONS)
    assert video_frame_count(moving / "videos" / "train_000003.mp4") == 32
    frames = decode_frames(moving / "videos" / "train_000003.mp4", indices=[0, 31])
    assert frames.shape == (2, 64, 64, 3)
    drawn, _ = draw_clip(np.random.default_rng([0, 0, 3]), label=3)
    assert np.abs(frames.numpy().astype(float) - drawn[[0, 31]]).mean() < 30  # lossy yuv420p, same picture


def test_generator_is_deterministic_and_seeded(moving, tmp_path):
    generate_moving_shapes(tmp_path / "again", train=3, val=1, seed=0)
    generate_moving_shapes(tmp_path / "other", train=3, val=1, seed=1)
    assert (tmp_path / "again" / "train.csv").read_text().splitlines() == \
        (moving / "train.csv").read_text().splitlines()[:3]  # a larger set extends a smaller one
    name = "videos/train_000002.mp4"
    reference = decode_frames(moving / name, indices=range(32))
    assert torch.equal(decode_frames(tmp_path / "again" / name, indices=range(32)), reference)
    assert not torch.equal(decode_frames(tmp_path / "other" / name, indices=range(32)), reference)


def _centroids(masks: np.ndarray) -> np.ndarray:
    """[T, 2] (x, y) centroid of each mask."""
    return np.array([[xs.mean(), ys.mean()] for ys, xs in (np.nonzero(mask) for mask in masks)])


def _overlap_after_turning(mask: np.ndarray, target: np.ndarray, *, degrees: float) -> float:
    """Fraction of ``mask``'s pixels, turned by ``degrees`` about its centroid (clockwise on
    screen for a positive angle), that land inside ``target``."""
    ys, xs = np.nonzero(mask)
    cx, cy = xs.mean(), ys.mean()
    cos, sin = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))
    x = np.round(cx + (xs - cx) * cos - (ys - cy) * sin).astype(int).clip(0, mask.shape[1] - 1)
    y = np.round(cy + (xs - cx) * sin + (ys - cy) * cos).astype(int).clip(0, mask.shape[0] - 1)
    return target[y, x].mean()


@pytest.mark.parametrize("seed", range(6))
def test_each_class_is_its_motion(seed):
    for label, motion in enumerate(MOTIONS):
        frames, masks = draw_clip(np.random.default_rng([seed, label]), label=label)
        assert frames.shape == (32, 64, 64, 3) and masks.any(axis=(1, 2)).all()
        assert not masks[:, [0, -1]].any() and not masks[:, :, [0, -1]].any()  # inside the frame throughout
        centroids, areas = _centroids(masks), masks.sum(axis=(1, 2))
        shift = centroids[-1] - centroids[0]
        if motion.startswith("move"):
            direction = {"move_left": (-1, 0), "move_right": (1, 0), "move_up": (0, -1), "move_down": (0, 1)}[motion]
            assert shift @ np.array(direction) > 0.25 * 64 and abs(shift @ np.array(direction[::-1])) < 1.5
            assert np.all(np.diff(centroids, axis=0) @ np.array(direction) > 0)
            assert areas.max() < 1.3 * areas.min()
        else:
            assert np.abs(centroids - centroids[0]).max() < 2.5, motion  # it stays where it is
        if motion == "rotate":
            for t in (0, 10, 20):  # 2 frames turn it by 16-24 degrees, one way or the other
                turned = max(_overlap_after_turning(masks[t], masks[t + 2], degrees=20 * sense) for sense in (-1, 1))
                assert turned > _overlap_after_turning(masks[t], masks[t + 2], degrees=0), t
        if motion == "still":
            assert (masks == masks[0]).all()
        if motion in ("grow", "shrink"):
            assert (areas[-1] / areas[0] > 3.5) == (motion == "grow") and (areas[0] / areas[-1] > 3.5) == (
                motion == "shrink")
        # lighter than the background in every channel, or darker in every channel
        contrast = frames[0][masks[0]].mean(axis=0) - frames[0][~masks[0]].mean(axis=0)
        assert (contrast > 60).all() or (contrast < -60).all(), contrast


def _gradient_frames(*, num_frames: int, height: int, width: int) -> torch.Tensor:
    """uint8 [T, H, W, 3]: red grows along x, green along y, blue with the frame."""
    x = torch.linspace(0, 255, width).view(1, 1, width).expand(num_frames, height, width)
    y = torch.linspace(0, 255, height).view(1, height, 1).expand(num_frames, height, width)
    t = torch.linspace(0, 255, num_frames).view(num_frames, 1, 1).expand(num_frames, height, width)
    return torch.stack([x, y, t], dim=-1).round().to(torch.uint8)


def test_train_transform_crops_flips_normalises_and_draws_from_torch():
    frames = _gradient_frames(num_frames=4, height=48, width=64)
    transform = video_train_transform(crop_size=32, short_side_range=(32, 48), mean=MEAN, std=STD)
    torch.manual_seed(0)
    clips = [transform(frames) for _ in range(20)]
    torch.manual_seed(0)
    assert torch.equal(transform(frames), clips[0])
    assert all(clip.shape == (3, 4, 32, 32) and clip.dtype == torch.float32 for clip in clips)
    red_slopes = {bool(clip[0, 0, 0, -1] > clip[0, 0, 0, 0]) for clip in clips}
    assert red_slopes == {True, False}  # flipped some of the time
    spans = {round(float(clip[1, 0, -1, 0] - clip[1, 0, 0, 0]), 1) for clip in clips}
    assert len(spans) > 3  # the scale jitter changes how much of the image a crop covers
    assert torch.allclose(clips[0][2, :, 5, 5], (torch.tensor([0.0, 85, 170, 255]) / 255 - 0.45) / 0.225, atol=1e-5)
    flat = torch.full((2, 40, 40, 3), 51, dtype=torch.uint8)
    assert torch.allclose(transform(flat), torch.full((3, 2, 32, 32), (0.2 - 0.45) / 0.225))
    with pytest.raises(ValueError, match="crop_size"):
        video_train_transform(crop_size=64, short_side_range=(32, 48), mean=MEAN, std=STD)


@pytest.mark.parametrize("height, width", [(48, 80), (90, 60), (50, 50)])
def test_test_views_match_pytorchvideo_uniform_crops(height, width):
    frames = _gradient_frames(num_frames=3, height=height, width=width)
    views = video_test_views(crop_size=32, short_side=40, num_crops=3, mean=MEAN, std=STD)(frames)
    oracle = _pytorchvideo_transforms()
    scaled = oracle.short_side_scale(frames.permute(3, 0, 1, 2).float() / 255, 40)
    expected = [(oracle.uniform_crop(scaled, 32, spatial_idx) - 0.45) / 0.225 for spatial_idx in range(3)]
    assert len(views) == 3 and all(torch.allclose(v, e, atol=1e-5) for v, e in zip(views, expected))
    (centre,) = video_test_views(crop_size=32, short_side=40, num_crops=1, mean=MEAN, std=STD)(frames)
    assert torch.allclose(centre, expected[1], atol=1e-5)


def test_dataset_train_clips_are_seeded_per_sample(moving):
    transform = video_train_transform(crop_size=48, short_side_range=(48, 64), mean=MEAN, std=STD)
    dataset = VideoListDataset(list_file=moving / "train.csv", root=moving, train=True, num_frames=8, stride=2,
                               transform=transform)
    assert dataset.classes == list(MOTIONS) and dataset.labels == list(range(8)) and len(dataset) == 8
    seeded = SeededSamples(dataset, None)
    clip, label = seeded[(5, 123)]
    assert clip.shape == (3, 8, 48, 48) and label == 5
    assert torch.equal(seeded[(5, 123)][0], clip)
    assert not torch.equal(seeded[(5, 124)][0], clip)
    with pytest.raises(ValueError, match="num_clips"):
        VideoListDataset(list_file=moving / "train.csv", root=moving, train=True, num_frames=8, stride=2,
                         transform=transform, num_clips=2)


def test_dataset_eval_views_are_every_clip_times_every_crop(moving):
    views_of = video_test_views(crop_size=48, short_side=48, num_crops=3, mean=MEAN, std=STD)
    dataset = VideoListDataset(list_file=moving / "val.csv", root=moving, train=False, num_frames=8, stride=3,
                               transform=views_of, num_clips=2)
    views, label = dataset[1]
    assert views.shape == (6, 3, 8, 48, 48) and label == 1
    second_clip = sampling.test_clip_indices(num_frames_video=32, num_frames=8, stride=3, num_clips=2)[1]
    expected = views_of(decode_frames(moving / "videos" / "val_000001.mp4", indices=second_clip))
    assert torch.equal(views[3:], torch.stack(expected))  # clip-major: clip 1's three crops last


def test_dataset_skips_or_names_bad_videos(moving, tmp_path):
    (tmp_path / "broken.mp4").write_text("not a video")
    (tmp_path / "list.csv").write_text(f"{moving}/videos/train_000000.mp4,0\nbroken.mp4,4\nmissing.mp4,2\n")
    views_of = video_test_views(crop_size=32, short_side=32, num_crops=1, mean=MEAN, std=STD)
    kwargs = dict(list_file=tmp_path / "list.csv", root=tmp_path, train=False, num_frames=4, stride=1,
                  transform=views_of)
    skipping = VideoListDataset(**kwargs, skip_bad=True)
    assert skipping.classes == ["0", "1", "2", "3", "4"]  # no classes.txt beside the videos
    assert skipping[0][0].shape == (1, 3, 4, 32, 32)
    assert skipping[1] is None and skipping[2] is None and skipping.skipped == 2
    with pytest.raises(VideoDecodeError, match="broken.mp4"):
        VideoListDataset(**kwargs)[1]


def test_cli_generates_once_and_refuses_other_settings(tmp_path, capsys):
    out = tmp_path / "data" / "moving"
    args = ["data", "moving-shapes", "--out", str(out), "--train", "2", "--val", "1"]
    assert main([*args, "--seed", "3"]) == 0
    printed = capsys.readouterr().out
    paths = ensure_moving_shapes(out, train=2, val=1, seed=3)
    assert all(str(path) in printed and path.exists() for path in paths.values())
    assert len(read_video_list(paths["train_list"], root=paths["root"])) == 2
    assert [p.name for p in out.parent.iterdir()] == ["moving"]  # no temporary folder left behind
    assert main([*args, "--seed", "4"]) == 1
    assert "moving-shapes generated with train=2, val=1, seed=3" in capsys.readouterr().err
