"""The embedded video set: one shape moving over a still background, in mp4 clips.

The class is the motion alone: moving left, right, up or down, growing, shrinking, rotating
(either way) or staying still. Everything a single frame shows is drawn independently of it: the
shape's kind (square, triangle, star or hexagon; a circle's rotation would be invisible), colour,
size and position, and the background (a colour with a gradient and still noise). Every clip
draws from its own ``numpy`` generator seeded by (seed, split, index): the same seed gives the
same frames, and a larger set extends a smaller one.

Three choices make the motion learnable by an average-pooled 3-D CNN in minutes on a CPU:

- Contrast of one sign in every channel. Either the background is dark (each channel in
  ``DARK``) and the shape light (each channel in ``LIGHT``), or the reverse. When the channels
  disagree (a shape redder but less green than its background), an edge's sign under a learned
  colour filter is random from clip to clip, and the direction of motion becomes the product of
  two random signs (the edge's and its temporal change). On such clips (version 1 of this set)
  average-pooled 3-D CNNs, SlowFast included, stayed at chance for 1,500 steps; on these they
  learn within a few hundred.
- Motions visible between sampled frames: translation over 30-50% of the side, 8-12 degrees of
  rotation a frame (at a stride of 2 frames, below the 30 degrees of half the hexagon's
  symmetry, so the turn stays visible), and growth by 2-2.5x over the clip.
- No class hangs on the sense of a rotation. Telling clockwise from counter-clockwise needs
  local motion related to where it is on the shape (a curl), which pooled features do not keep:
  with the two senses as classes (version 2 of this set), a small SlowFast learned the other six
  classes perfectly in 12 epochs and those two not at all (55% between them).
"""
from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np

from vislab.data.datasets.shapes import SPLIT_CODES, ensure_generated, rasterise, shape_outline
from vislab.data.video.encode import write_mp4

MOTIONS = ("move_left", "move_right", "move_up", "move_down", "grow", "shrink", "rotate", "still")
MOVING_KINDS = ("square", "triangle", "star", "hexagon")
NUM_FRAMES = 32
SIZE = 64
FPS = 10
RADIUS = (0.08, 0.22)  # of the circumscribed circle, as a fraction of the frame side
TRAVEL = (0.3, 0.5)  # distance a moving shape covers in a clip, as a fraction of the frame side
DEGREES_PER_FRAME = (8.0, 12.0)
SCALE_RATIO = (2.0, 2.5)  # largest / smallest radius of a growing or shrinking shape
DARK, LIGHT = (0.0, 90.0), (165.0, 255.0)  # channel ranges of the background and the shape, either way round
GRADIENT = 30.0  # largest change of a channel across the background
NOISE = 15.0  # standard deviation of the background's still noise
MARKER = "moving_shapes.json"
VERSION = 3  # recorded with a generated set: 1 drew other colours and slower motions, 2 other classes

_DIRECTIONS = {"move_left": (-1, 0), "move_right": (1, 0), "move_up": (0, -1), "move_down": (0, 1)}


def _centres(rng: np.random.Generator, motion: str, *, radius: float, size: int, num_frames: int) -> np.ndarray:
    """[T, 2] (x, y) centres that keep a shape of ``radius`` off the frame's border throughout."""
    low, high = radius + 1, size - radius - 1
    if motion not in _DIRECTIONS:
        return np.repeat(rng.uniform(low, high, (1, 2)), num_frames, axis=0)
    travel = np.array(_DIRECTIONS[motion]) * rng.uniform(*TRAVEL) * size
    start = rng.uniform(np.maximum(low, low - travel), np.minimum(high, high - travel))
    return start + np.linspace(0, 1, num_frames)[:, None] * travel


def plain_background(rng: np.random.Generator, *, size: int, dark: bool) -> np.ndarray:
    """Float [size, size, 3]: a dark or light colour, a linear gradient about it at a random angle, still noise."""
    colour = rng.uniform(*(DARK if dark else LIGHT), 3)
    ys, xs = np.mgrid[0:size, 0:size]
    angle = rng.uniform(0, 2 * np.pi)
    along = (xs * np.cos(angle) + ys * np.sin(angle)) / size
    along -= along.mean()
    canvas = colour + along[..., None] * rng.uniform(-GRADIENT, GRADIENT, 3) + rng.normal(0, NOISE, (size, size, 3))
    return np.clip(canvas, 0, 255)


def draw_clip(rng: np.random.Generator, *, label: int, num_frames: int = NUM_FRAMES,
              size: int = SIZE) -> tuple[np.ndarray, np.ndarray]:
    """uint8 frames [T, size, size, 3] of a shape moving as ``MOTIONS[label]``, and its masks [T, size, size]."""
    motion = MOTIONS[label]
    dark_background = bool(rng.integers(2))
    background = plain_background(rng, size=size, dark=dark_background)
    kind = MOVING_KINDS[rng.integers(len(MOVING_KINDS))]
    colour = rng.uniform(*(LIGHT if dark_background else DARK), 3)
    angles = np.full(num_frames, rng.uniform(0, 2 * np.pi))
    progress = np.arange(num_frames) / (num_frames - 1)
    if motion in ("grow", "shrink"):
        smallest = rng.uniform(RADIUS[0], RADIUS[1] / SCALE_RATIO[1]) * size
        radii = smallest * rng.uniform(*SCALE_RATIO) ** (progress if motion == "grow" else 1 - progress)
    else:
        radii = np.full(num_frames, rng.uniform(*RADIUS) * size)
    if motion == "rotate":
        sense = rng.choice((-1, 1))  # y points down: a growing angle turns clockwise on screen
        angles += sense * np.deg2rad(rng.uniform(*DEGREES_PER_FRAME)) * np.arange(num_frames)
    centres = _centres(rng, motion, radius=radii.max(), size=size, num_frames=num_frames)
    frames = np.empty((num_frames, size, size, 3), dtype=np.uint8)
    masks = np.empty((num_frames, size, size), dtype=bool)
    for t in range(num_frames):
        outline = shape_outline(kind, centre=centres[t], radius=radii[t], angle=angles[t])
        masks[t] = rasterise(outline, height=size, width=size)
        frames[t] = np.where(masks[t][..., None], colour, background).astype(np.uint8)
    return frames, masks


def generate_moving_shapes(out: Path, *, train: int, val: int, seed: int, num_frames: int = NUM_FRAMES,
                           size: int = SIZE, fps: int = FPS) -> None:
    """Write ``out/videos/{split}_NNNNNN.mp4``, the lists ``out/{train,val}.csv``
    (``videos/train_000000.mp4,0``) and the class names ``out/classes.txt``. Clip ``i`` shows
    motion ``i % 8``, so each split is balanced."""
    counts = {"train": train, "val": val}
    for split, count in counts.items():
        if count < 1:
            raise ValueError(f"the moving-shapes set needs at least one {split} video, got {split}={count}")
    if size < 16 or size % 2:
        raise ValueError(f"size must be even and at least 16 (yuv420p halves it), got {size}")
    if num_frames < 2:
        raise ValueError(f"a clip needs at least 2 frames to show motion, got num_frames={num_frames}")
    out = Path(out)
    (out / "videos").mkdir(parents=True, exist_ok=True)
    for split, count in counts.items():
        lines = []
        for index in range(count):
            label = index % len(MOTIONS)
            frames, _ = draw_clip(np.random.default_rng([seed, SPLIT_CODES[split], index]), label=label,
                                  num_frames=num_frames, size=size)
            name = f"videos/{split}_{index:06d}.mp4"
            write_mp4(out / name, frames, fps=fps)
            lines.append(f"{name},{label}\n")
        (out / f"{split}.csv").write_text("".join(lines))
    (out / "classes.txt").write_text("".join(f"{motion}\n" for motion in MOTIONS))


def ensure_moving_shapes(root: Path, *, train: int, val: int, seed: int) -> dict[str, Path]:
    """Generate the set into ``root`` unless it is there already; return the folder the list
    paths are relative to (``root``), the two lists and the class names."""
    root = Path(root)
    settings = {"train": train, "val": val, "seed": seed, "num_frames": NUM_FRAMES, "size": SIZE, "fps": FPS,
                "version": VERSION}
    ensure_generated(root, name="moving-shapes", marker=MARKER, settings=settings,
                     generate=partial(generate_moving_shapes, train=train, val=val, seed=seed))
    return {"root": root, "train_list": root / "train.csv", "val_list": root / "val.csv",
            "classes": root / "classes.txt"}
