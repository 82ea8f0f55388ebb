"""The moving-actors set: determinism, AVA's file formats, boxes from the actors' masks, actions
that only motion tells, proposals, and reading it all back through ``ava_files``."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from vislab.data.datasets.ava_files import (read_annotations, read_exclusions, read_frame_list, read_label_map,
                                            read_proposals, timestamp_to_frame)
from vislab.data.datasets.image_folder import DataError
from vislab.data.datasets.moving_actors import (ACTIONS, DIRECTIONS, FIRST_SECOND, FPS, KEYFRAME_SECONDS, NUM_FRAMES,
                                                SIZE, box_iou, draw_video, ensure_moving_actors,
                                                _proposals, generate_moving_actors, keyframe_index, place_actor,
                                                tight_box)
from vislab.data.datasets.shapes import SPLIT_CODES
from vislab.data.video.decode import decode_frames, video_frame_count

TRAIN, VAL, SEED = 4, 3, 0
CLIP_HALF = 8  # frames either side of a keyframe in a 16-frame clip


@pytest.fixture(scope="module")
def actors_set(tmp_path_factory) -> dict[str, Path]:
    return ensure_moving_actors(tmp_path_factory.mktemp("actors") / "set", train=TRAIN, val=VAL, seed=SEED)


def _rows(path: Path) -> list[list[str]]:
    with open(path, newline="") as f:
        return list(csv.reader(f))


def _truth_boxes(paths: dict[str, Path], split: str) -> dict[tuple[str, int, int], tuple[np.ndarray, set[str]]]:
    """(video_id, second, person_id) -> (box, action names) of a split's annotation rows."""
    boxes: dict[tuple[str, int, int], tuple[np.ndarray, set[str]]] = {}
    for video_id, second, *box, action, person in _rows(paths[f"{split}_annotations"]):
        entry = boxes.setdefault((video_id, int(second), int(person)), (np.array(box, dtype=float), set()))
        assert np.array_equal(entry[0], np.array(box, dtype=float))  # an actor's rows repeat its box
        entry[1].add(ACTIONS[int(action) - 1])
    return boxes


def test_same_seed_same_bytes_and_a_larger_set_extends_a_smaller_one(actors_set, tmp_path):
    generate_moving_actors(tmp_path / "small", train=2, val=2, seed=SEED)
    generate_moving_actors(tmp_path / "other", train=2, val=2, seed=SEED + 1)
    root = actors_set["root"]
    for name in ("frames/train_000001/train_000001_000011.jpg", "videos/val_000001.mp4",
                 "annotations/action_list.pbtxt"):
        assert (tmp_path / "small" / name).read_bytes() == (root / name).read_bytes(), name
    assert (tmp_path / "other" / "videos/val_000001.mp4").read_bytes() != (root / "videos/val_000001.mp4").read_bytes()
    for name in ("annotations/train.csv", "annotations/val.csv", "annotations/val_proposals.csv",
                 "annotations/val_excluded_timestamps.csv", "frame_lists/train.csv"):
        small = (tmp_path / "small" / name).read_text().splitlines()
        large = (root / name).read_text().splitlines()
        assert small and large[:len(small)] == small, name


def test_an_existing_set_is_kept_and_other_settings_are_refused(actors_set):
    marker = actors_set["root"] / "moving_actors.json"
    written = marker.stat().st_mtime_ns
    assert ensure_moving_actors(actors_set["root"], train=TRAIN, val=VAL, seed=SEED) == actors_set
    assert marker.stat().st_mtime_ns == written
    with pytest.raises(DataError, match="seed=1"):
        ensure_moving_actors(actors_set["root"], train=TRAIN, val=VAL, seed=1)


def test_frame_lists_frames_and_videos(actors_set):
    for split, count in (("train", TRAIN), ("val", VAL)):
        lines = actors_set[f"{split}_frame_list"].read_text().splitlines()
        assert lines[0] == "original_vido_id video_id frame_id path labels"
        rows = [line.split(" ") for line in lines[1:]]
        assert all(len(row) == 5 and row[4] == '""' for row in rows)
        assert len(rows) == count * NUM_FRAMES
        for index in range(count):
            video_id = f"{split}_{index:06d}"
            listed = [row for row in rows if row[0] == video_id]
            assert [(int(row[1]), int(row[2])) for row in listed] == [(index, frame) for frame in range(NUM_FRAMES)]
            assert listed[0][3] == f"{video_id}/{video_id}_000001.jpg"
            assert sorted(p.name for p in (actors_set["frames"] / video_id).iterdir()) == \
                [Path(row[3]).name for row in listed]
            assert video_frame_count(actors_set["videos"] / f"{video_id}.mp4") == NUM_FRAMES
    frame = np.asarray(Image.open(actors_set["frames"] / "val_000002" / "val_000002_000011.jpg"))
    decoded = decode_frames(actors_set["videos"] / "val_000002.mp4", indices=[10])[0].numpy()
    assert frame.shape == (SIZE, SIZE, 3) and np.abs(frame.astype(float) - decoded).mean() < 10  # same picture


def test_label_map_annotation_and_exclusion_rows(actors_set):
    assert actors_set["label_map"].read_text() == "".join(
        f'item {{\n  name: "{action}"\n  id: {number}\n}}\n' for number, action in enumerate(ACTIONS, start=1))
    for split in ("train", "val"):
        for video_id, second, *box, action, person in _rows(actors_set[f"{split}_annotations"]):
            assert video_id.startswith(f"{split}_") and len(second) == 4 and int(second) in KEYFRAME_SECONDS
            assert all(len(value) == 5 and value[1] == "." for value in box)  # 0.xxx or 1.000
            x1, y1, x2, y2 = map(float, box)
            assert 0 <= x1 < x2 <= 1 and 0 <= y1 < y2 <= 1
            assert 1 <= int(action) <= len(ACTIONS) and int(person) >= 0
    excluded = _rows(actors_set["val_exclusions"])
    assert excluded == [["val_000001", f"{KEYFRAME_SECONDS[-1]:04d}"]]
    annotated = {(row[0], row[1]) for row in _rows(actors_set["val_annotations"])}
    assert tuple(excluded[0]) not in annotated  # as in AVA: no ground truth at an excluded keyframe
    assert len(annotated) == VAL * len(KEYFRAME_SECONDS) - 1
    for second in KEYFRAME_SECONDS:  # a 16-frame clip around every keyframe is inside the video
        assert CLIP_HALF <= keyframe_index(second) <= NUM_FRAMES - CLIP_HALF


def test_boxes_are_the_actors_tight_boxes_at_the_keyframe(actors_set):
    truth = _truth_boxes(actors_set, "train")
    for index in range(TRAIN):
        video_id = f"train_{index:06d}"
        frames, actors, masks = draw_video(np.random.default_rng([SEED, SPLIT_CODES["train"], index]))
        assert 2 <= len(actors) <= 3
        assert not (masks.sum(axis=0) > 1).any()  # actors never overlap
        for second in KEYFRAME_SECONDS:
            frame = keyframe_index(second)
            jpeg = np.asarray(Image.open(actors_set["frames"] / video_id / f"{video_id}_{frame + 1:06d}.jpg"))
            assert np.abs(jpeg.astype(float) - frames[frame]).mean() < 5  # JPEG at quality 95
            for person, (actor, actor_masks) in enumerate(zip(actors, masks)):
                box, actions = truth[(video_id, second, person)]
                assert actions == set(actor.actions)
                np.testing.assert_allclose(box, tight_box(actor_masks[frame]), atol=5e-4)
                x1, y1, x2, y2 = np.round(box * SIZE).astype(int)
                inside = np.zeros((SIZE, SIZE), dtype=bool)
                inside[y1:y2, x1:x2] = True
                assert actor_masks[frame][inside].any() and not actor_masks[frame][~inside].any()
        assert {person for (video, _, person) in truth if video == video_id} == set(range(len(actors)))


def _centroids(masks: np.ndarray) -> np.ndarray:
    """[T, 2] (x, y) centroid of each mask."""
    return np.array([[xs.mean(), ys.mean()] for ys, xs in (np.nonzero(mask) for mask in masks)])


def test_the_actions_are_the_motions_seen_in_the_masks():
    seen = set()
    for index in range(12):
        _, actors, masks = draw_video(np.random.default_rng([SEED, SPLIT_CODES["train"], index]))
        for actor, actor_masks in zip(actors, masks):
            seen.update(actor.actions)
            drift = (_centroids(actor_masks)[-1] - _centroids(actor_masks)[0]) / (NUM_FRAMES - 1) * 2
            direction = next((DIRECTIONS[action] for action in actor.actions if action in DIRECTIONS), (0, 0))
            along, across = drift @ np.array(direction), drift @ np.array(direction[::-1])
            if direction != (0, 0):
                assert along >= 1.5 and abs(across) < 0.1, actor.actions  # pixels between frames 2 apart
            else:
                assert np.abs(drift).max() < 0.1, actor.actions
            changed = [(actor_masks[t] ^ actor_masks[t + 2]).sum() / actor_masks[t].sum()
                       for t in range(NUM_FRAMES - 2)]
            if actor.actions == ("still",):
                assert max(changed) == 0
            elif actor.actions == ("rotate",):
                assert min(changed) > 0.1
            turns = np.abs(np.diff(actor.angles))
            assert (turns > 0).all() if "rotate" in actor.actions else (turns == 0).all()
    assert seen == set(ACTIONS)


@pytest.mark.parametrize("direction", [None, *DIRECTIONS])
def test_one_frame_does_not_tell_the_actions(direction):
    """The same draws give the same looks under every motion, and the same first frame with or
    without rotation: what tells the actions apart is only in later frames."""
    def drawn(*, direction, rotates):
        actor, _ = place_actor(np.random.default_rng(7), direction=direction, rotates=rotates, light=True, placed=[])
        return actor

    still = drawn(direction=None, rotates=False)
    plain, rotating = drawn(direction=direction, rotates=False), drawn(direction=direction, rotates=True)
    for actor in (plain, rotating):
        assert (actor.kind, actor.radius, actor.angles[0]) == (still.kind, still.radius, still.angles[0])
        np.testing.assert_array_equal(actor.colour, still.colour)
    assert np.array_equal(plain.outlines()[0], rotating.outlines()[0])
    assert not np.array_equal(plain.outlines()[2], rotating.outlines()[2])


def test_proposals_cover_every_box_and_add_false_ones(actors_set):
    low_scored_background = 0
    for split in ("train", "val"):
        truth = _truth_boxes(actors_set, split)
        proposals: dict[tuple[str, int], list[tuple[np.ndarray, float]]] = {}
        for video_id, second, *box, empty, score in _rows(actors_set[f"{split}_proposals"]):
            assert empty == "" and len(second) == 4 and 0 < float(score) < 1
            proposals.setdefault((video_id, int(second)), []).append((np.array(box, dtype=float), float(score)))
        count = TRAIN if split == "train" else VAL
        assert len(proposals) == count * len(KEYFRAME_SECONDS)  # excluded keyframes have proposals too
        for (video_id, second, _), (box, _) in truth.items():
            best = max(box_iou(box, proposal[None])[0] for proposal, score in proposals[(video_id, second)]
                       if score >= 0.8)
            assert best > 0.5
        for (video_id, second), scored in proposals.items():
            boxes = np.array([box for (video, sec, _), (box, _) in truth.items() if (video, sec) == (video_id, second)])
            if not len(boxes):  # an excluded keyframe
                continue
            for proposal, score in scored:
                overlap = box_iou(proposal, boxes).max()
                assert overlap > 0.5 or overlap < 0.1  # an actor's or on the background
                if overlap > 0.5:
                    assert score >= 0.8
                else:
                    low_scored_background += score < 0.8
    assert low_scored_background > 0
    # a hard negative comes with HARD_NEGATIVE_RATE of the keyframes: too few here to count on one
    rng, boxes = np.random.default_rng(0), np.array([[0.1, 0.1, 0.3, 0.3]])
    false_scores = [score for _ in range(200) for box, score in _proposals(rng, boxes) if box_iou(box, boxes)[0] < 0.1]
    assert min(false_scores) < 0.8 <= max(false_scores)


def test_round_trip_through_the_ava_readers(actors_set):
    label_map = read_label_map(actors_set["label_map"])
    assert label_map.names == {number: action for number, action in enumerate(ACTIONS, start=1)}
    truth = _truth_boxes(actors_set, "val")
    read = read_annotations(actors_set["val_annotations"], label_map=label_map)
    assert sum(len(boxes) for boxes in read.values()) == len(truth)
    for (video_id, second), boxes in read.items():
        for actor in boxes:
            box, actions = truth[(video_id, second, actor.person_id)]
            assert actor.box == tuple(box) and {label_map.names[a] for a in actor.actions} == actions
    proposals = read_proposals(actors_set["val_proposals"], score_threshold=0.8)
    assert all(box.score >= 0.8 for boxes in proposals.values() for box in boxes)
    assert set(proposals) == {(f"val_{i:06d}", second) for i in range(VAL) for second in KEYFRAME_SECONDS}
    assert read_exclusions(actors_set["val_exclusions"]) == {("val_000001", KEYFRAME_SECONDS[-1])}
    frames = read_frame_list(actors_set["train_frame_list"], root=actors_set["frames"])
    assert list(frames) == [f"train_{i:06d}" for i in range(TRAIN)]
    assert all(len(paths) == NUM_FRAMES and all(p.is_file() for p in paths) for paths in frames.values())
    for second in KEYFRAME_SECONDS:
        assert timestamp_to_frame(second, fps=FPS, first_second=FIRST_SECOND) == keyframe_index(second)
