"""A COCO-format detection set as a classification dataset, for pre-training a trunk on a
detector's own data (the MAE-then-ViTDet miniature, and the shapes "ImageNet" of the
pre-training studies).

Two views of the same annotations:

- ``CocoImages``: one example per image, labelled by the category of its largest annotation (by
  area), the closest thing to an image-level class the set has. Self-supervised pre-training reads
  the images only; the label serves the k-NN monitor.
- ``CocoObjects``: one example per annotated object, a square crop around its box with some
  context, labelled by its category: an object-centric classification set like ImageNet, whose
  labels are decided by what the crop shows (``data.coco_examples=objects``).
"""
from __future__ import annotations

import os

from PIL import Image
from torch.utils.data import Dataset

from vislab.data.datasets.coco import CocoDetection
from vislab.data.datasets.image_folder import read_rgb

MIN_OBJECT_SIDE = 8.0  # px: smaller boxes hold too few pixels to be classified from a crop


class _CocoClassification(Dataset):
    """What both views share: the validated annotations, class names and label of each category."""

    def __init__(self, *, images_dir: str | os.PathLike, annotations: str | os.PathLike):
        self._detection = CocoDetection(images_dir=images_dir, annotations=annotations, train=True, masks=False)
        self.classes = self._detection.classes
        self._label_of = {category: label for label, category in enumerate(self._detection.category_ids)}
        self.paths: list = []
        self.labels: list[int] = []

    def _image_path(self, image_id: int):
        return self._detection.images_dir / self._detection.coco.imgs[image_id]["file_name"]

    def __len__(self) -> int:
        return len(self.labels)

    def check_files(self) -> None:
        self._detection.check_files()


class CocoImages(_CocoClassification):
    """``(PIL RGB image, label of its largest object)`` for each image that has annotations."""

    def __init__(self, *, images_dir: str | os.PathLike, annotations: str | os.PathLike):
        super().__init__(images_dir=images_dir, annotations=annotations)
        for image_id in self._detection.image_ids:
            largest = max(self._detection._annotations(image_id), key=lambda ann: ann.get("area", 0.0))
            self.paths.append(self._image_path(image_id))
            self.labels.append(self._label_of[largest["category_id"]])

    def __getitem__(self, index: int) -> tuple[Image.Image, int]:
        return read_rgb(self.paths[index]), self.labels[index]


class CocoObjects(_CocoClassification):
    """``(PIL RGB crop, category label)`` for each non-crowd object whose box sides are both at
    least ``MIN_OBJECT_SIDE``. The crop is the square of side ``context`` x the box's longer side,
    centred on the box; where it leaves the image it is filled with black (PIL's crop)."""

    def __init__(self, *, images_dir: str | os.PathLike, annotations: str | os.PathLike, context: float):
        if context < 1.0:
            raise ValueError(f"data.object_context={context}: the crop must hold the whole box (>= 1.0)")
        super().__init__(images_dir=images_dir, annotations=annotations)
        self.squares = []
        for image_id in self._detection.image_ids:
            for ann in self._detection._annotations(image_id):
                x, y, w, h = ann["bbox"]
                if min(w, h) < MIN_OBJECT_SIDE:
                    continue
                side = round(context * max(w, h))
                left, top = round(x + (w - side) / 2), round(y + (h - side) / 2)
                self.paths.append(self._image_path(image_id))
                self.squares.append((left, top, left + side, top + side))
                self.labels.append(self._label_of[ann["category_id"]])
        if not self.labels:
            raise ValueError(f"{self._detection.annotation_file}: no object with both box sides >= "
                             f"{MIN_OBJECT_SIDE} px")

    def __getitem__(self, index: int) -> tuple[Image.Image, int]:
        return read_rgb(self.paths[index]).crop(self.squares[index]), self.labels[index]
