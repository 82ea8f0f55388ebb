"""A folder of class sub-folders holding JPEG/PNG images (the ImageFolder layout)."""
from __future__ import annotations

import os
from pathlib import Path

from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset
from torchvision.datasets.folder import find_classes, make_dataset

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


class BadImageError(RuntimeError):
    """An image file that cannot be decoded."""


class DataError(FileNotFoundError):
    """A dataset path that is missing or holds no usable files."""


def read_rgb(path: str | os.PathLike) -> Image.Image:
    """Decode ``path`` fully as RGB, or raise ``BadImageError`` naming the file."""
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise BadImageError(f"cannot read image {path}: {exc}") from exc


class ImageFolderDataset(Dataset):
    """``root/<class>/<image>``; classes are the sorted sub-folder names.

    With ``skip_bad`` an unreadable image yields None (the collate function drops it and counts
    it); otherwise it raises ``BadImageError`` naming the file.
    """

    def __init__(self, root: str | os.PathLike, *, skip_bad: bool = False):
        root = Path(root)
        if not root.is_dir():
            raise DataError(f"image folder {root} does not exist")
        try:
            self.classes, class_to_idx = find_classes(str(root))
        except FileNotFoundError:
            raise DataError(f"image folder {root} has no class sub-folders") from None
        samples = make_dataset(str(root), class_to_idx, extensions=IMAGE_EXTENSIONS, allow_empty=True)
        if not samples:
            raise DataError(f"image folder {root} has no images ({', '.join(IMAGE_EXTENSIONS)}) "
                            f"in its {len(self.classes)} class folders")
        self.root = root
        self.samples = samples
        self.labels = [label for _, label in samples]
        self.skip_bad = skip_bad

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Image.Image, int] | None:
        path, label = self.samples[index]
        try:
            return read_rgb(path), label
        except BadImageError:
            if self.skip_bad:
                return None
            raise
