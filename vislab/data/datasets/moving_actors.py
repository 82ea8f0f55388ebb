"""The embedded action-detection set: several shapes ("actors") in a video, each acting by its
motion, written in AVA v2.2's file formats.

Every video (2 s at 10 fps, 96x96) shows 2-3 actors over one still background. An actor moves
left, right, up or down, or not at all, and may rotate too; its actions, constant for the video,
are its direction (``move_*``), ``rotate``, both, or ``still`` when it does neither. One frame
cannot tell them apart: kind, colour, size, start angle and the sense of rotation are drawn the
same way whatever the motion (from the same stream of draws, so an actor drawn with another
motion keeps its looks, and its first frame with or without rotation). Nor does where an actor
is at the keyframe: each video has one keyframe, in its middle, and every actor's centre there is
drawn from the same band whatever its motion, the band that keeps the fastest mover inside the
frame for the whole video. (Version 1 of this set had three keyframes in 4-s videos, with start
positions drawn per motion: at the first keyframe a left-mover was mostly in the right half. The
single-frame control then reached 38% mAP, 59% on ``move_down``, by position alone.)

The motions follow what ``moving_shapes`` found learnable by small 3-D CNNs: contrast of one
sign in every channel (light actors on a dark background or the reverse, its ``plain_background``),
motions visible between frames sampled 2 apart (translation at 8-12% of the side a second, 0.8-1.2
pixels a frame; its ``DEGREES_PER_FRAME`` of rotation) and no class on the sense of a rotation.
The six actions are drawn with weights that put each on 7 of every 38 actors (see
``MOTION_WEIGHTS``); actors are placed so that their boxes stay apart and inside the frame in
every frame, so no actor hides another and a box is the tight box of the whole shape (a third
actor that finds no room in ``PLACEMENT_TRIES`` positions is left out: about 1 video in 10).

Files, as AVA and PySlowFast lay them out (the readers are in ``ava_files``):

- ``frames/<video_id>/<video_id>_000001.jpg``: the frames (1-based, as AVA's extracted frames),
  and ``videos/<video_id>.mp4`` with the same frames, for decoding with PyAV.
- ``frame_lists/{train,val}.csv``: PySlowFast frame lists (``original_vido_id video_id frame_id
  path labels``, sic), paths relative to ``frames/``.
- ``annotations/{train,val}.csv``: ``video_id,second,x1,y1,x2,y2,action_id,person_id``, one row
  per (box, action), boxes normalised to [0, 1] with 3 decimals, seconds zero-padded as AVA's.
  Frames start at second ``FIRST_SECOND`` (900, as AVA's clips); the keyframe of second s is
  frame index ``(s - 900) * FPS`` (PySlowFast's ``sec_to_frame``). The keyframe is second 901,
  frame 10 of 20, with room for a 16-frame clip about it. (PySlowFast itself only reads seconds
  902-1798 of AVA; a reader of this set takes every listed second.)
- ``annotations/{train,val}_proposals.csv``: person proposals as PySlowFast's
  ``ava_*_predicted_boxes.csv`` (``video_id,second,x1,y1,x2,y2,,score``): every actor's box
  jittered by up to ``PROPOSAL_JITTER`` of its size, scored in [0.8, 1); boxes on the background
  scored below 0.8 (dropped by the usual 0.8 threshold); and now and then one scored above it,
  a hard negative that an evaluator counts as a false positive.
- ``annotations/val_excluded_timestamps.csv``: ``video_id,second`` of a few val keyframes. As in
  AVA, the ground truth has no rows there while the proposals do, so a model predicts on them and
  only an evaluator that honours the exclusions does not count those predictions.
- ``annotations/action_list.pbtxt``: the label map (``item { name: "move_left" id: 1 }``).

Every video draws from its own ``numpy`` generator seeded by (seed, split, index): the same seed
writes the same bytes, and a larger set extends a smaller one. The default size of ``vislab data
moving-actors`` (720 train and 144 val videos, as many keyframes, with about 1,750 and 350 actor
boxes) is meant for a CPU training of a small SlowFast within 15 minutes.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
from PIL import Image

from vislab.data.datasets.moving_shapes import DARK, DEGREES_PER_FRAME, LIGHT, MOVING_KINDS, plain_background
from vislab.data.datasets.shapes import SPLIT_CODES, ensure_generated, rasterise, shape_outline
from vislab.data.video.encode import write_mp4

ACTIONS = ("move_left", "move_right", "move_up", "move_down", "rotate", "still")  # label map ids 1..6
DIRECTIONS = {"move_left": (-1, 0), "move_right": (1, 0), "move_up": (0, -1), "move_down": (0, 1)}
# (direction or None, rotates) -> weight. Each direction alone 6 and with rotation 1; rotation
# alone 3 (so 4 + 3 = 7 rotate); still 7: every action is on 7 of 38 actors.
MOTION_WEIGHTS = {**{(direction, False): 6 for direction in DIRECTIONS},
                  **{(direction, True): 1 for direction in DIRECTIONS}, (None, True): 3, (None, False): 7}
SIZE = 96  # even, as yuv420p needs
FPS = 10
FIRST_SECOND = 900
SECONDS = 2
NUM_FRAMES = SECONDS * FPS
KEYFRAME_SECONDS = (901,)  # the middle of the video: see the module docstring
ACTORS_PER_VIDEO = (2, 3)
RADIUS = (0.07, 0.13)  # of the circumscribed circle, as a fraction of the frame side
SPEED = (0.08, 0.12)  # of the frame side a second
MIN_GAP = 3.0  # pixels between two actors' boxes, in every frame
PLACEMENT_TRIES = 100  # positions tried for an actor before the video goes without it
PROPOSAL_JITTER = 0.04  # largest shift of a proposal's side, as a fraction of the box's width or height
PROPOSAL_SCORES, FALSE_PROPOSAL_SCORES = (0.8, 1.0), (0.05, 0.8)
FALSE_PROPOSALS = (0, 2)  # low-scored background boxes a keyframe
HARD_NEGATIVE_RATE = 0.1  # chance that a keyframe has a high-scored background box
FALSE_PROPOSAL_SIDES = (0.12, 0.3)  # of the frame side
FALSE_PROPOSAL_MAX_IOU = 0.1  # with every actor's box
EXCLUDED_EVERY = 16  # val videos 1, 17, 33, ... have their last keyframe excluded
JPEG_QUALITY = 95
MARKER = "moving_actors.json"
VERSION = 2  # recorded with a generated set; 1 had three keyframes in 4-s videos and positions drawn per motion


@dataclass(frozen=True)
class Actor:
    """One shape's looks and track: ``centres`` [T, 2] (x, y) and ``angles`` [T] in pixels and radians."""
    kind: str
    colour: np.ndarray
    radius: float
    centres: np.ndarray
    angles: np.ndarray
    actions: tuple[str, ...]

    def outlines(self) -> list[np.ndarray]:
        return [shape_outline(self.kind, centre=centre, radius=self.radius, angle=angle)
                for centre, angle in zip(self.centres, self.angles)]


def _draw_motion(rng: np.random.Generator) -> tuple[str | None, bool]:
    """(direction or None, whether it rotates), by MOTION_WEIGHTS."""
    motions = list(MOTION_WEIGHTS)
    weights = np.array(list(MOTION_WEIGHTS.values()), dtype=float)
    return motions[rng.choice(len(motions), p=weights / weights.sum())]


def _track(rng: np.random.Generator, *, direction: str | None, speed: float, radius: float) -> np.ndarray:
    """[T, 2] centres at ``speed`` pixels a frame along ``direction``, passing the keyframe at a
    place drawn from one band for every motion: the band in which the fastest mover stays off the
    frame's border throughout."""
    frames = np.arange(NUM_FRAMES) - keyframe_index(KEYFRAME_SECONDS[0])
    reach = SPEED[1] * SIZE / FPS * np.abs(frames).max()  # the fastest mover's farthest way from the keyframe
    at_keyframe = rng.uniform(radius + 1 + reach, SIZE - radius - 1 - reach, 2)
    velocity = np.array(DIRECTIONS.get(direction, (0, 0))) * speed
    return at_keyframe + frames[:, None] * velocity


def _apart(first: np.ndarray, second: np.ndarray) -> bool:
    """Whether two [T, 4] box tracks keep MIN_GAP pixels between them in every frame."""
    separated = ((first[:, 0] >= second[:, 2] + MIN_GAP) | (second[:, 0] >= first[:, 2] + MIN_GAP)
                 | (first[:, 1] >= second[:, 3] + MIN_GAP) | (second[:, 1] >= first[:, 3] + MIN_GAP))
    return bool(separated.all())


def place_actor(rng: np.random.Generator, *, direction: str | None, rotates: bool, light: bool,
                placed: list[np.ndarray]) -> tuple[Actor, np.ndarray] | None:
    """An actor of random looks moving along ``direction`` (None: staying) and maybe rotating,
    with its [T, 4] (x1, y1, x2, y2) polygon box track, that stays apart from the ``placed`` box
    tracks; or None if PLACEMENT_TRIES positions all come too close. Every draw is made whatever
    the motion, in the same order, so that the same generator gives the same looks under any
    motion, and the same first frame with or without rotation."""
    kind = MOVING_KINDS[rng.integers(len(MOVING_KINDS))]
    colour = rng.uniform(*(LIGHT if light else DARK), 3)
    radius = rng.uniform(*RADIUS) * SIZE
    turn = rng.choice((-1, 1)) * np.deg2rad(rng.uniform(*DEGREES_PER_FRAME))  # either sense: no class on it
    angles = rng.uniform(0, 2 * np.pi) + turn * np.arange(NUM_FRAMES) * rotates
    speed = rng.uniform(*SPEED) * SIZE / FPS
    actions = ((direction,) if direction else ()) + (("rotate",) if rotates else ())
    # the polygon's box about its centre in each frame, which a placement only shifts
    outlines = np.stack([shape_outline(kind, centre=np.zeros(2), radius=radius, angle=angle) for angle in angles])
    extents = np.concatenate([outlines.min(axis=1), outlines.max(axis=1)], axis=1)
    for _ in range(PLACEMENT_TRIES):
        centres = _track(rng, direction=direction, speed=speed, radius=radius)
        boxes = extents + np.tile(centres, 2)
        if all(_apart(boxes, other) for other in placed):
            return Actor(kind=kind, colour=colour, radius=radius, centres=centres, angles=angles,
                         actions=actions or ("still",)), boxes
    return None


def draw_video(rng: np.random.Generator) -> tuple[np.ndarray, list[Actor], np.ndarray]:
    """uint8 frames [T, SIZE, SIZE, 3], the actors and their masks [A, T, SIZE, SIZE]."""
    dark_background = bool(rng.integers(2))
    frames = np.repeat(plain_background(rng, size=SIZE, dark=dark_background)[None], NUM_FRAMES, axis=0)
    actors, tracks = [], []
    for _ in range(rng.integers(ACTORS_PER_VIDEO[0], ACTORS_PER_VIDEO[1] + 1)):
        direction, rotates = _draw_motion(rng)
        placed = place_actor(rng, direction=direction, rotates=rotates, light=dark_background, placed=tracks)
        if placed is not None:
            actors.append(placed[0])
            tracks.append(placed[1])
    masks = np.array([[rasterise(outline, height=SIZE, width=SIZE) for outline in actor.outlines()]
                      for actor in actors])
    for actor, actor_masks in zip(actors, masks):
        frames[actor_masks] = actor.colour
    return frames.astype(np.uint8), actors, masks


def tight_box(mask: np.ndarray) -> np.ndarray:
    """(x1, y1, x2, y2) of a mask's pixels, pixel edges normalised by the side: a pixel at column
    x spans [x, x + 1)."""
    ys, xs = np.nonzero(mask)
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]) / np.array(mask.shape[::-1] * 2)


def keyframe_index(second: int) -> int:
    """The frame (0-based) of a keyframe second, as PySlowFast's ``sec_to_frame``."""
    return (second - FIRST_SECOND) * FPS


def _area(boxes: np.ndarray) -> np.ndarray:
    return np.prod(boxes[..., 2:] - boxes[..., :2], axis=-1)


def box_iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one (x1, y1, x2, y2) box with each of boxes [N, 4]."""
    low, high = np.maximum(box[:2], boxes[:, :2]), np.minimum(box[2:], boxes[:, 2:])
    inter = np.prod(np.clip(high - low, 0, None), axis=1)
    return inter / (_area(box) + _area(boxes) - inter)


def _proposals(rng: np.random.Generator, boxes: np.ndarray) -> list[tuple[np.ndarray, float]]:
    """(box, score) person proposals of one keyframe whose actors' boxes are ``boxes`` [A, 4]."""
    jitter = rng.uniform(-PROPOSAL_JITTER, PROPOSAL_JITTER, boxes.shape) * np.tile(boxes[:, 2:] - boxes[:, :2], 2)
    proposals = [(np.clip(box, 0, 1), rng.uniform(*PROPOSAL_SCORES)) for box in boxes + jitter]
    false_scores = [rng.uniform(*FALSE_PROPOSAL_SCORES) for _ in range(rng.integers(FALSE_PROPOSALS[0],
                                                                                    FALSE_PROPOSALS[1] + 1))]
    if rng.random() < HARD_NEGATIVE_RATE:
        false_scores.append(rng.uniform(*PROPOSAL_SCORES))
    for score in false_scores:
        for _ in range(PLACEMENT_TRIES):
            sides = rng.uniform(*FALSE_PROPOSAL_SIDES, 2)
            corner = rng.uniform(0, 1 - sides)
            box = np.concatenate([corner, corner + sides])
            if box_iou(box, boxes).max() < FALSE_PROPOSAL_MAX_IOU:
                proposals.append((box, score))
                break
    return proposals


def _box_text(box: np.ndarray) -> str:
    return ",".join(f"{value:.3f}" for value in box)


def _write_frames(out: Path, video_id: str, frames: np.ndarray) -> None:
    folder = out / "frames" / video_id
    folder.mkdir(parents=True)
    for number, pixels in enumerate(frames, start=1):
        Image.fromarray(pixels).save(folder / f"{video_id}_{number:06d}.jpg", quality=JPEG_QUALITY, subsampling=0)
    write_mp4(out / "videos" / f"{video_id}.mp4", frames, fps=FPS)


def _write_split(out: Path, split: str, *, count: int, seed: int) -> None:
    """Frames, videos, frame list, ground truth, proposals (and for val the exclusions) of a split."""
    frame_list = ["original_vido_id video_id frame_id path labels\n"]
    truth, proposals, excluded = [], [], []
    for index in range(count):
        rng = np.random.default_rng([seed, SPLIT_CODES[split], index])
        video_id = f"{split}_{index:06d}"
        frames, actors, masks = draw_video(rng)
        _write_frames(out, video_id, frames)
        frame_list += [f'{video_id} {index} {frame} {video_id}/{video_id}_{frame + 1:06d}.jpg ""\n'
                       for frame in range(NUM_FRAMES)]
        for second in KEYFRAME_SECONDS:
            boxes = np.array([tight_box(actor_masks[keyframe_index(second)]) for actor_masks in masks])
            proposals += [f"{video_id},{second:04d},{_box_text(box)},,{score:.6f}\n"
                          for box, score in _proposals(rng, boxes)]
            if split == "val" and index % EXCLUDED_EVERY == 1 and second == KEYFRAME_SECONDS[-1]:
                excluded.append(f"{video_id},{second:04d}\n")
                continue
            truth += [f"{video_id},{second:04d},{_box_text(box)},{ACTIONS.index(action) + 1},{person}\n"
                      for person, (actor, box) in enumerate(zip(actors, boxes)) for action in actor.actions]
    (out / "frame_lists" / f"{split}.csv").write_text("".join(frame_list))
    (out / "annotations" / f"{split}.csv").write_text("".join(truth))
    (out / "annotations" / f"{split}_proposals.csv").write_text("".join(proposals))
    if split == "val":
        (out / "annotations" / "val_excluded_timestamps.csv").write_text("".join(excluded))


def generate_moving_actors(out: Path, *, train: int, val: int, seed: int) -> None:
    """Write the set's frames, videos, frame lists and annotations into ``out``."""
    counts = {"train": train, "val": val}
    for split, count in counts.items():
        if count < 1:
            raise ValueError(f"the moving-actors set needs at least one {split} video, got {split}={count}")
    out = Path(out)
    for folder in ("frames", "videos", "frame_lists", "annotations"):
        (out / folder).mkdir(parents=True, exist_ok=True)
    for split, count in counts.items():
        _write_split(out, split, count=count, seed=seed)
    (out / "annotations" / "action_list.pbtxt").write_text(
        "".join(f'item {{\n  name: "{action}"\n  id: {number}\n}}\n' for number, action in enumerate(ACTIONS, 1)))


def ensure_moving_actors(root: Path, *, train: int, val: int, seed: int) -> dict[str, Path]:
    """Generate the set into ``root`` unless it is there already; return the paths of its parts."""
    root = Path(root)
    settings = {"train": train, "val": val, "seed": seed, "size": SIZE, "fps": FPS, "num_frames": NUM_FRAMES,
                "version": VERSION}
    ensure_generated(root, name="moving-actors", marker=MARKER, settings=settings,
                     generate=partial(generate_moving_actors, train=train, val=val, seed=seed))
    annotations = root / "annotations"
    return {"root": root, "frames": root / "frames", "videos": root / "videos",
            "train_frame_list": root / "frame_lists" / "train.csv", "val_frame_list": root / "frame_lists" / "val.csv",
            "train_annotations": annotations / "train.csv", "val_annotations": annotations / "val.csv",
            "train_proposals": annotations / "train_proposals.csv",
            "val_proposals": annotations / "val_proposals.csv",
            "label_map": annotations / "action_list.pbtxt",
            "val_exclusions": annotations / "val_excluded_timestamps.csv"}
