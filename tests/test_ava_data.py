"""Action-detection data: keyframe clips, clip-and-box transforms, batching, and the dataset read
from AVA-format files (frames through frame lists, or mp4 through PyAV)."""
from __future__ import annotations

import pytest
import torch

from vislab.data.loader import collate_actors
from vislab.data.transforms.ava import actor_test_transform, actor_train_transform
from vislab.data.video.sampling import keyframe_clip_indices

MEAN, STD = [0.0, 0.0, 0.0], [1.0, 1.0, 1.0]


def test_keyframe_clip_is_centred_and_clamped_as_pyslowfast_takes_it():
    # PySlowFast's get_sequence: range(centre - T*tau/2, centre + T*tau/2, tau), clamped
    assert keyframe_clip_indices(keyframe=30, num_frames_video=100, num_frames=4, stride=2) == [26, 28, 30, 32]
    assert keyframe_clip_indices(keyframe=1, num_frames_video=100, num_frames=4, stride=2) == [0, 0, 1, 3]
    assert keyframe_clip_indices(keyframe=98, num_frames_video=100, num_frames=4, stride=2) == [94, 96, 98, 99]
    assert keyframe_clip_indices(keyframe=7, num_frames_video=10, num_frames=3, stride=0) == [7, 7, 7]


def _frames_with_white_square(*, height: int, width: int, box: tuple[int, int, int, int]) -> torch.Tensor:
    frames = torch.zeros(2, height, width, 3, dtype=torch.uint8)
    x1, y1, x2, y2 = box
    frames[:, y1:y2, x1:x2] = 255
    return frames


def _bright_extent(clip: torch.Tensor) -> tuple[int, int, int, int]:
    """x1, y1, x2, y2 of the pixels above one half in the first frame."""
    ys, xs = (clip[0, 0] > 0.5).nonzero(as_tuple=True)
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


@pytest.mark.parametrize("seed", range(6))
def test_train_transform_moves_boxes_with_the_pixels(seed):
    """Scale, crop and flip: the box of a white square stays on the square (within a pixel)."""
    frames = _frames_with_white_square(height=60, width=80, box=(30, 20, 50, 40))
    boxes = torch.tensor([[30 / 80, 20 / 60, 50 / 80, 40 / 60]])
    transform = actor_train_transform(crop_size=56, short_side_range=(60, 72), hflip=True, mean=MEAN, std=STD)
    torch.manual_seed(seed)
    clip, moved = transform(frames, boxes)
    assert clip.shape[:2] == (3, 2) and clip.shape[-2:] == (56, 56)
    assert torch.allclose(moved[0], torch.tensor(_bright_extent(clip), dtype=torch.float32), atol=1.5)


def test_train_transform_clips_boxes_to_the_crop():
    frames = torch.zeros(1, 64, 128, 3, dtype=torch.uint8)
    boxes = torch.tensor([[0.0, 0.0, 0.1, 1.0], [0.9, 0.0, 1.0, 1.0]])  # both sides: one falls outside
    transform = actor_train_transform(crop_size=64, short_side_range=(64, 64), hflip=False, mean=MEAN, std=STD)
    _, moved = transform(frames, boxes)
    assert (moved >= 0).all() and (moved <= 64).all()
    widths = moved[:, 2] - moved[:, 0]
    assert (widths == 0).sum() == 1  # a 128-wide frame cropped to 64 keeps at most one of the two boxes


def test_test_transform_keeps_the_full_frame_at_the_test_size():
    frames = _frames_with_white_square(height=60, width=90, box=(30, 20, 60, 40))
    boxes = torch.tensor([[30 / 90, 20 / 60, 60 / 90, 40 / 60]])
    clip, moved = actor_test_transform(short_side=40, mean=MEAN, std=STD)(frames, boxes)
    assert clip.shape[-2:] == (40, 60)
    assert torch.allclose(moved, torch.tensor([[20.0, 40 / 3, 40.0, 80 / 3]]))


def test_collate_pads_clips_and_indexes_boxes_by_clip():
    def sample(height, width, boxes, second):
        target = {"boxes": torch.tensor(boxes, dtype=torch.float32),
                  "labels": torch.eye(3)[: len(boxes)], "keyframe": ("v", second),
                  "normalised_boxes": torch.zeros(len(boxes), 4)}
        return torch.ones(3, 2, height, width), target

    batch = collate_actors([sample(4, 6, [[0, 0, 1, 1]], 901), None,
                            sample(5, 3, [[1, 1, 2, 2], [0, 0, 3, 3]], 902)])
    assert batch["clips"].shape == (2, 3, 2, 5, 6) and batch["skipped"] == 1
    assert batch["clips"][0, :, :, 4].abs().sum() == 0 and batch["clips"][1, :, :, :, 3:].abs().sum() == 0
    assert batch["boxes"][:, 0].tolist() == [0, 1, 1]
    assert batch["keyframes"] == [("v", 901), ("v", 902), ("v", 902)]
    assert batch["labels"].shape == (3, 3)
