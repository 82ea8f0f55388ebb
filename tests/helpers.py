"""Shared builders for the end-to-end tests: tiny configs and generated image folders."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from vislab.config import load_config

TINY_DIGITS = [
    "model.name=resnet18", "model.width=0.25", "model.norm=GN", "model.norm_groups=4",
    "data.name=digits", "data.image_size=32", "data.val_resize=32", "data.crop_scale=[0.8,1.0]",
    "data.hflip=false", "data.batch_size=16", "data.num_workers=0", "data.max_train_samples=96",
    "data.max_val_samples=64", "optim.name=adamw", "optim.lr=0.002", "optim.weight_decay=0.05",
    "train.epochs=2", "train.log_every=2", "schedule.warmup_epochs=0.5",
]


def tiny_digits_config(output_dir: Path, *overrides: str):
    return load_config(None, [*TINY_DIGITS, f"output_dir={output_dir}", *overrides])


COLOURS = {"red": (220, 40, 40), "green": (40, 200, 60), "blue": (40, 60, 220)}


def make_image_folder(root: Path, *, per_class: dict[str, int], size: int = 40, seed: int = 0,
                      suffix: str = ".png") -> Path:
    """``root/<split>/<colour>/*.png``: noisy images dominated by one colour per class."""
    rng = np.random.default_rng(seed)
    for split, count in per_class.items():
        for name, colour in COLOURS.items():
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                pixels = np.clip(np.array(colour) + rng.normal(0, 30, (size, size, 3)), 0, 255)
                Image.fromarray(pixels.astype(np.uint8)).save(folder / f"{i:03d}{suffix}")
    return root
