"""A folder of class sub-folders holding JPEG/PNG images (the ImageFolder layout)."""
from __future__ import annotations

import os
from pathlib import Path

from PIL import Image
from torch.utils.data import Dataset
from torchvision.datasets.folder import find_classes, make_dataset

from vislab.data.datasets.image_modes import to_rgb
from vislab.data.errors import BadImageError, DataError
from vislab.data.file_checks import check_images, open_image

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


def read_rgb(path: str | os.PathLike) -> Image.Image:
    """Decode ``path`` fully as 8-bit RGB, scaled by its real range (``image_modes.to_rgb``), or
    raise ``BadImageError`` naming the file."""
    with open_image(path) as image:
        return to_rgb(image)


class ImageFolderDataset(Dataset):
    """``root/<class>/<image>``; classes are the sorted sub-folder names.

    With ``require_every_class`` (training) a class folder without images is an error. With
    ``skip_bad`` an unreadable image yields None (the collate function drops it and counts
    it); otherwise it raises ``BadImageError`` naming the file.
    """

    def __init__(self, root: str | os.PathLike, *, skip_bad: bool = False, require_every_class: bool = False):
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
        if require_every_class:
            empty = sorted(set(self.classes) - {self.classes[label] for _, label in samples})
            if empty:
                raise DataError(f"image folder {root} has class folders without images: "
                                f"{', '.join(str(root / name) for name in empty)}; a class the model "
                                f"never sees cannot be learned: add images or remove the folders")
        self.root = root
        self.samples = samples
        self.labels = [label for _, label in samples]
        self.skip_bad = skip_bad

    def __len__(self) -> int:
        return len(self.samples)

    def check_files(self) -> None:
        """Every image's header, before a run relies on them (``file_checks``)."""
        check_images([path for path, _ in self.samples], what=f"image folder {self.root}", skip_bad=self.skip_bad)

    def __getitem__(self, index: int) -> tuple[Image.Image, int] | None:
        path, label = self.samples[index]
        try:
            return read_rgb(path), label
        except BadImageError:
            if self.skip_bad:
                return None
            raise
