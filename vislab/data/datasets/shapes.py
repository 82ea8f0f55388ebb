"""The embedded detection set: synthetic shapes in COCO format, generated on first use.

Each image (sides drawn from 112-160 px) has a textured background (noise, a gradient or
stripes) and 1-6 shapes of five kinds, sized 14-80 px, rotated, in a colour drawn independently of
the kind. Later shapes occlude earlier ones; a placement that would hide more than 40% of an
earlier shape is redrawn. Annotations describe the visible region: its tight box, its pixel
area, and its mask, stored as the polygon for an unoccluded shape and as compressed RLE of the
visible pixels for an occluded one, so both COCO mask formats are exercised.

Shapes are rasterised by pycocotools' polygon rasteriser, the one that decodes the polygon
annotations, and painted through that mask: annotation, decoded mask and pixels agree exactly
(PIL's ImageDraw centres pixels differently and differs by a ring of pixels, much of a 14 px shape).
Every image draws from its own ``numpy`` generator seeded by (seed, split, index): the same seed
writes the same bytes, and a larger set extends a smaller one.
"""
from __future__ import annotations

import json
import os
import shutil
import uuid
from functools import partial
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from vislab.data.datasets.image_folder import DataError

SHAPE_KINDS = ("circle", "square", "triangle", "star", "hexagon")
IMAGE_SIDES = (112, 160)
SHAPES_PER_IMAGE = (1, 6)
SHAPE_DIAMETERS = (14.0, 80.0)  # of the circumscribed circle, drawn log-uniformly
MAX_HIDDEN = 0.4  # fraction of an earlier shape a later one may cover
PLACEMENT_TRIES = 20
MIN_COLOUR_DISTANCE = 90.0  # from the mean colour the shape is painted over
JPEG_QUALITY = 90
MARKER = "shapes.json"
SPLIT_CODES = {"train": 0, "val": 1}
_VERTICES = {"circle": 32, "square": 4, "triangle": 3, "hexagon": 6}
_STAR_INNER_RADIUS = 0.45


def shape_outline(kind: str, *, centre: np.ndarray, radius: float, angle: float) -> np.ndarray:
    """Polygon vertices [V, 2] (x, y), rounded as they are stored in the JSON."""
    if kind == "star":
        angles = angle + np.arange(10) * np.pi / 5
        radii = np.where(np.arange(10) % 2 == 0, radius, radius * _STAR_INNER_RADIUS)
    else:
        count = _VERTICES[kind]
        angles = angle + np.arange(count) * 2 * np.pi / count
        radii = np.full(count, radius)
    return np.round(centre + radii[:, None] * np.stack([np.cos(angles), np.sin(angles)], axis=1), 2)


def rasterise(outline: np.ndarray, *, height: int, width: int) -> np.ndarray:
    """Boolean [H, W] mask of a polygon, by the rasteriser that decodes COCO polygons."""
    rle = mask_utils.frPyObjects([outline.ravel().tolist()], height, width)
    return mask_utils.decode(rle)[:, :, 0].astype(bool)


def textured_background(rng: np.random.Generator, *, height: int, width: int) -> np.ndarray:
    """Float [H, W, 3]: coloured noise, a linear gradient or stripes, plus mild noise."""
    first, second = rng.uniform(0, 255, (2, 3))
    ys, xs = np.mgrid[0:height, 0:width]
    angle = rng.uniform(0, np.pi)
    along = xs * np.cos(angle) + ys * np.sin(angle)
    texture = rng.integers(3)
    if texture == 0:
        canvas = first + rng.normal(0, 35, (height, width, 3))
    elif texture == 1:
        ramp = (along - along.min()) / (along.max() - along.min())
        canvas = first + ramp[..., None] * (second - first)
    else:
        half_period = rng.uniform(2, 8)
        canvas = np.where(((along // half_period) % 2 == 0)[..., None], first, second)
    return canvas + rng.normal(0, 6, (height, width, 3))


def contrasting_colour(rng: np.random.Generator, under: np.ndarray) -> np.ndarray:
    """A random colour far enough from ``under`` (the mean colour it covers) to be seen."""
    candidates = rng.uniform(0, 255, (8, 3))
    distances = np.linalg.norm(candidates - under, axis=1)
    far = np.flatnonzero(distances >= MIN_COLOUR_DISTANCE)
    return candidates[far[0] if far.size else distances.argmax()]


def _place(rng: np.random.Generator, kind: str, *, visible: list[np.ndarray], areas: list[int], height: int,
           width: int) -> tuple[np.ndarray, np.ndarray] | None:
    """A random outline of ``kind`` and its mask that hides at most MAX_HIDDEN of each earlier shape."""
    for _ in range(PLACEMENT_TRIES):
        radius = np.exp(rng.uniform(*np.log(SHAPE_DIAMETERS))) / 2
        centre = rng.uniform((radius, radius), (width - radius, height - radius))
        outline = shape_outline(kind, centre=centre, radius=radius, angle=rng.uniform(0, 2 * np.pi))
        mask = rasterise(outline, height=height, width=width)
        if all((seen & ~mask).sum() >= (1 - MAX_HIDDEN) * area for seen, area in zip(visible, areas)):
            return outline, mask
    return None


def _draw_image(rng: np.random.Generator) -> tuple[np.ndarray, list[dict]]:
    """Pixels [H, W, 3] uint8 and the shapes' annotations (without ids)."""
    height, width = (int(side) for side in rng.integers(IMAGE_SIDES[0], IMAGE_SIDES[1] + 1, 2))
    canvas = textured_background(rng, height=height, width=width)
    kinds, outlines, visible, areas = [], [], [], []
    for _ in range(rng.integers(SHAPES_PER_IMAGE[0], SHAPES_PER_IMAGE[1] + 1)):
        kind = int(rng.integers(len(SHAPE_KINDS)))
        placed = _place(rng, SHAPE_KINDS[kind], visible=visible, areas=areas, height=height, width=width)
        if placed is None:
            continue
        outline, mask = placed
        canvas[mask] = contrasting_colour(rng, canvas[mask].mean(axis=0))
        visible = [seen & ~mask for seen in visible] + [mask]
        kinds.append(kind)
        outlines.append(outline)
        areas.append(int(mask.sum()))
    annotations = []
    for kind, outline, seen, area in zip(kinds, outlines, visible, areas):
        ys, xs = np.nonzero(seen)
        x0, y0 = int(xs.min()), int(ys.min())
        if seen.sum() == area:
            segmentation = [outline.ravel().tolist()]
        else:
            rle = mask_utils.encode(np.asfortranarray(seen.astype(np.uint8)))
            segmentation = {"size": rle["size"], "counts": rle["counts"].decode("ascii")}
        annotations.append({"category_id": kind + 1, "bbox": [x0, y0, int(xs.max()) - x0 + 1, int(ys.max()) - y0 + 1],
                            "area": int(seen.sum()), "iscrowd": 0, "segmentation": segmentation})
    return np.clip(canvas, 0, 255).astype(np.uint8), annotations


def _write_split(out: Path, split: str, *, count: int, seed: int) -> None:
    folder = out / split
    folder.mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for index in range(count):
        pixels, shapes = _draw_image(np.random.default_rng([seed, SPLIT_CODES[split], index]))
        file_name = f"{index:06d}.jpg"
        Image.fromarray(pixels).save(folder / file_name, quality=JPEG_QUALITY, subsampling=0)
        images.append({"id": index + 1, "file_name": file_name, "height": pixels.shape[0], "width": pixels.shape[1]})
        for shape in shapes:
            annotations.append({"id": len(annotations) + 1, "image_id": index + 1, **shape})
    dataset = {"info": {"description": f"vislab synthetic shapes, {split}, seed {seed}"}, "licenses": [],
               "images": images, "annotations": annotations,
               "categories": [{"id": i + 1, "name": kind, "supercategory": "shape"}
                              for i, kind in enumerate(SHAPE_KINDS)]}
    (out / "annotations").mkdir(parents=True, exist_ok=True)
    (out / "annotations" / f"{split}.json").write_text(json.dumps(dataset))


def generate_shapes(out: Path, *, train: int, val: int, seed: int) -> None:
    """Write ``out/{train,val}/NNNNNN.jpg`` and ``out/annotations/{train,val}.json``."""
    counts = {"train": train, "val": val}
    for split, count in counts.items():
        if count < 1:
            raise ValueError(f"the shapes set needs at least one {split} image, got {split}={count}")
    for split, count in counts.items():
        _write_split(Path(out), split, count=count, seed=seed)


def _paths(root: Path) -> dict[str, Path]:
    root = Path(root)
    return {"train_images": root / "train", "train_annotations": root / "annotations" / "train.json",
            "val_images": root / "val", "val_annotations": root / "annotations" / "val.json"}


def _describe(settings: dict) -> str:
    return ", ".join(f"{key}={value}" for key, value in settings.items())


def _is_generated(root: Path, *, name: str, marker: str, settings: dict) -> bool:
    """True if ``root`` holds the set ``settings`` describe; False if it is absent or an empty folder."""
    if not root.exists() or (root.is_dir() and not any(root.iterdir())):
        return False
    if not (root / marker).is_file():
        raise DataError(f"{root} exists and is not a generated {name} set (it has no {marker}); "
                        f"choose a new or empty folder")
    found = json.loads((root / marker).read_text())
    if found != settings:
        raise DataError(f"{root} holds {name} generated with {_describe(found)}, not {_describe(settings)}; "
                        f"choose another folder or delete this one")
    return True


def ensure_generated(root: Path, *, name: str, marker: str, settings: dict, generate: Callable[[Path], None]) -> None:
    """Run ``generate(folder)`` for ``root`` unless it already holds the ``name`` set that
    ``settings`` describe (recorded in ``root/marker``); a folder holding anything else is refused.

    The set is written into a temporary sibling folder that is renamed into place, so a crash
    never leaves half a set, and processes racing to create it all end with the same one.
    """
    root = Path(root)
    if _is_generated(root, name=name, marker=marker, settings=settings):
        return
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = root.parent / f".{root.name}.{uuid.uuid4().hex}.tmp"
    try:
        generate(tmp)
        (tmp / marker).write_text(json.dumps(settings))
        try:
            os.replace(tmp, root)
        except OSError:  # another process renamed its copy into place first
            if not _is_generated(root, name=name, marker=marker, settings=settings):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def ensure_shapes(root: Path, *, train: int, val: int, seed: int) -> dict[str, Path]:
    """Generate the set into ``root`` unless it is there already; return its four paths."""
    ensure_generated(root, name="shapes", marker=MARKER, settings={"train": train, "val": val, "seed": seed},
                     generate=partial(generate_shapes, train=train, val=val, seed=seed))
    return _paths(root)
