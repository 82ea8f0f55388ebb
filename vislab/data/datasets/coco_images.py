"""The images of a COCO-format detection set as an image dataset, for self-supervised
pre-training on a detector's own training images (the MAE-then-ViTDet miniature on the shapes
set). Labels are read only by the k-NN monitor: an image's label is the category of its largest
annotation (by area), the closest thing to an image-level class the detection set has.
"""
from __future__ import annotations

import os

from PIL import Image
from torch.utils.data import Dataset

from vislab.data.datasets.coco import CocoDetection
from vislab.data.datasets.image_folder import read_rgb


class CocoImages(Dataset):
    """``(PIL RGB image, label of its largest object)`` for each image that has annotations."""

    def __init__(self, *, images_dir: str | os.PathLike, annotations: str | os.PathLike):
        detection = CocoDetection(images_dir=images_dir, annotations=annotations, train=True, masks=False)
        self._detection = detection
        coco = detection.coco
        self.classes = detection.classes
        label_of = {category: label for label, category in enumerate(detection.category_ids)}
        self.paths, self.labels = [], []
        for image_id in detection.image_ids:
            largest = max(detection._annotations(image_id), key=lambda ann: ann.get("area", 0.0))
            self.paths.append(detection.images_dir / coco.imgs[image_id]["file_name"])
            self.labels.append(label_of[largest["category_id"]])

    def __len__(self) -> int:
        return len(self.paths)

    def check_files(self) -> None:
        self._detection.check_files()

    def __getitem__(self, index: int) -> tuple[Image.Image, int]:
        return read_rgb(self.paths[index]), self.labels[index]
