"""The embedded video set: one shape moving over a still textured background, in mp4 clips.

The class is the motion alone: moving left, right, up or down, rotating clockwise or
counter-clockwise, growing or shrinking. Everything a single frame shows is drawn independently
of it: the shape's kind (square, triangle, star or hexagon; a circle's rotation would be
invisible), colour, size and position, and the background (noise, a gradient or stripes, as in
the shapes detection set). Rotations turn 3-6 degrees a frame, less than half of the hexagon's
60-degree symmetry even at a stride of 4 frames, so their sense stays visible. Every clip draws
from its own ``numpy`` generator seeded by (seed, split, index): the same seed gives the same
frames, and a larger set extends a smaller one.
"""
from __future__ import annotations

from functools import partial
from pathlib import Path

import av
import numpy as np

from vislab.data.datasets.shapes import (SPLIT_CODES, contrasting_colour, ensure_generated, rasterise,
                                         shape_outline, textured_background)

MOTIONS = ("move_left", "move_right", "move_up", "move_down", "rotate_clockwise", "rotate_counterclockwise",
           "grow", "shrink")
MOVING_KINDS = ("square", "triangle", "star", "hexagon")
NUM_FRAMES = 32
SIZE = 64
FPS = 10
KEYFRAME_INTERVAL = 8  # several key frames a clip, so that decoding a clip exercises seeking
RADIUS = (0.08, 0.2)  # of the circumscribed circle, as a fraction of the frame side
TRAVEL = (0.3, 0.5)  # distance a moving shape covers in a clip, as a fraction of the frame side
DEGREES_PER_FRAME = (3.0, 6.0)
SCALE_RATIO = (1.6, 1.9)  # largest / smallest radius of a growing or shrinking shape
MARKER = "moving_shapes.json"

_DIRECTIONS = {"move_left": (-1, 0), "move_right": (1, 0), "move_up": (0, -1), "move_down": (0, 1)}


def _centres(rng: np.random.Generator, motion: str, *, radius: float, size: int, num_frames: int) -> np.ndarray:
    """[T, 2] (x, y) centres that keep a shape of ``radius`` off the frame's border throughout."""
    low, high = radius + 1, size - radius - 1
    if motion not in _DIRECTIONS:
        return np.repeat(rng.uniform(low, high, (1, 2)), num_frames, axis=0)
    travel = np.array(_DIRECTIONS[motion]) * rng.uniform(*TRAVEL) * size
    start = rng.uniform(np.maximum(low, low - travel), np.minimum(high, high - travel))
    return start + np.linspace(0, 1, num_frames)[:, None] * travel


def draw_clip(rng: np.random.Generator, *, label: int, num_frames: int = NUM_FRAMES,
              size: int = SIZE) -> tuple[np.ndarray, np.ndarray]:
    """uint8 frames [T, size, size, 3] of a shape moving as ``MOTIONS[label]``, and its masks [T, size, size]."""
    motion = MOTIONS[label]
    background = textured_background(rng, height=size, width=size)
    kind = MOVING_KINDS[rng.integers(len(MOVING_KINDS))]
    colour = contrasting_colour(rng, background.mean(axis=(0, 1)))
    angles = np.full(num_frames, rng.uniform(0, 2 * np.pi))
    progress = np.arange(num_frames) / (num_frames - 1)
    if motion in ("grow", "shrink"):
        smallest = rng.uniform(RADIUS[0], RADIUS[1] / SCALE_RATIO[1]) * size
        radii = smallest * rng.uniform(*SCALE_RATIO) ** (progress if motion == "grow" else 1 - progress)
    else:
        radii = np.full(num_frames, rng.uniform(*RADIUS) * size)
    if motion.startswith("rotate"):
        # y points down, so a growing angle turns clockwise on screen
        sense = 1 if motion == "rotate_clockwise" else -1
        angles += sense * np.deg2rad(rng.uniform(*DEGREES_PER_FRAME)) * np.arange(num_frames)
    centres = _centres(rng, motion, radius=radii.max(), size=size, num_frames=num_frames)
    frames = np.empty((num_frames, size, size, 3), dtype=np.uint8)
    masks = np.empty((num_frames, size, size), dtype=bool)
    still = np.clip(background, 0, 255)
    for t in range(num_frames):
        outline = shape_outline(kind, centre=centres[t], radius=radii[t], angle=angles[t])
        masks[t] = rasterise(outline, height=size, width=size)
        frames[t] = np.where(masks[t][..., None], colour, still).astype(np.uint8)
    return frames, masks


def _encoder() -> str:
    """H.264 when this FFmpeg build has libx264, else MPEG-4 part 2, which every build has."""
    try:
        av.codec.Codec("libx264", "w")
        return "libx264"
    except av.FFmpegError:
        return "mpeg4"


def write_mp4(path: Path, frames: np.ndarray, *, fps: int) -> None:
    """Encode uint8 [T, H, W, 3] (H and W even, as yuv420p needs) single-threaded, so that the
    same frames give the same file on any machine."""
    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream(_encoder(), rate=fps, options={"threads": "1"})
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = "yuv420p"
        stream.codec_context.gop_size = KEYFRAME_INTERVAL
        for pixels in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")))
        container.mux(stream.encode())


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
    settings = {"train": train, "val": val, "seed": seed, "num_frames": NUM_FRAMES, "size": SIZE, "fps": FPS}
    ensure_generated(root, name="moving-shapes", marker=MARKER, settings=settings,
                     generate=partial(generate_moving_shapes, train=train, val=val, seed=seed))
    return {"root": root, "train_list": root / "train.csv", "val_list": root / "val.csv",
            "classes": root / "classes.txt"}
