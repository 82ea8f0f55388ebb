"""Shared test helpers: tiny configs, generated image folders, unwritable folders, and the
timm-conversion check."""
from __future__ import annotations

import errno
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import vislab
from vislab.config import load_config
from vislab.convert import convert_file

DATA = Path(__file__).parent / "data"  # reference tensors made by other codebases (see each README)

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


def deny_writes(folder: Path, monkeypatch) -> None:
    """Make ``folder`` unwritable to this process as a folder without write permission is to a
    user other than root. The tests run as root, whom the kernel lets write anywhere whatever the
    mode, so instead ``os.access`` answers no to writing there and creating a file in it through
    ``os.open`` (``tempfile``'s way, hence every atomic write's) fails with EACCES, as the kernel
    answers another user."""
    folder = folder.resolve()
    access, open_file = os.access, os.open

    def denying_access(path, mode, **kwargs):
        if mode & os.W_OK and Path(os.fsdecode(path)).resolve() == folder:
            return False
        return access(path, mode, **kwargs)

    def denying_open(path, flags, *args, **kwargs):
        if flags & os.O_CREAT and Path(os.fsdecode(path)).resolve().parent == folder:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
        return open_file(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "access", denying_access)
    monkeypatch.setattr(os, "open", denying_open)


def assert_timm_conversion_matches(reference, *, model, model_name: str, folder: Path, image_size: int) -> None:
    """Save the timm ``reference`` (random weights), convert the file as ``vislab convert --from
    timm --model model_name`` does, load it strictly into ``model`` and compare logits on a fixed
    random batch of two images: non-trivial, and equal within 1e-4."""
    src, dst = folder / "timm.pth", folder / "converted.safetensors"
    torch.save(reference.state_dict(), src)
    convert_file(source="timm", model_name=model_name, src=src, dst=dst)
    assert vislab.load_weights(model, dst).ok  # strict: every tensor of the model is loaded
    x = torch.randn(2, 3, image_size, image_size, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected, logits = reference.eval()(x), model.eval()(x)
    assert expected.std() > 0.1  # random weights that give a non-trivial output
    assert (logits - expected).abs().max().item() <= 1e-4


def tensorboard_images(run_dir: Path) -> dict[str, list[tuple[int, int, int]]]:
    """Each image tag of a run's TensorBoard events: (step, height, width) of every image logged."""
    from tensorboard.backend.event_processing.event_accumulator import IMAGES, EventAccumulator

    events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={IMAGES: 0}).Reload()
    return {tag: [(image.step, image.height, image.width) for image in events.Images(tag)]
            for tag in events.Tags()[IMAGES]}
