"""Detection and instance-segmentation data in COCO format (Lin et al., 2014), read with pycocotools.

An item is ``(PIL RGB image, target)``; ``target`` holds ``image_id``, ``orig_size`` (h, w),
``boxes`` (``tv_tensors.BoundingBoxes``, XYXY absolute pixels, clamped to the image),
``labels`` (int64, contiguous 0..C-1 in sorted category-id order) and, with ``masks=True``,
``masks`` (``tv_tensors.Mask``, uint8 [N, H, W]). For training, crowd annotations are left out
and images without any other annotation are dropped (unless ``keep_empty``); for evaluation
every image and annotation is kept.
"""
from __future__ import annotations

import contextlib
import io
import json
import math
import os
from pathlib import Path

import numpy as np
import torch
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.transforms.v2 import functional as F

from vislab.data.datasets.image_folder import DataError, read_rgb
from vislab.data.file_checks import check_claimed_size, check_images

REQUIRED_KEYS = ("images", "annotations", "categories")


def decode_segmentation(segmentation: list | dict, *, height: int, width: int) -> np.ndarray:
    """uint8 [H, W] mask of a COCO segmentation: polygons, uncompressed RLE (``counts`` a list,
    as crowd regions are stored) or compressed RLE (``counts`` a string).

    Polygons of fewer than three points are skipped, as detectron2 does: pycocotools would read
    a four-number polygon as a box.
    """
    if isinstance(segmentation, list):
        polygons = [p for p in segmentation if len(p) >= 6 and len(p) % 2 == 0]
        if not polygons:
            return np.zeros((height, width), dtype=np.uint8)
        rle = mask_utils.merge(mask_utils.frPyObjects(polygons, height, width))
    elif isinstance(segmentation["counts"], list):
        rle = mask_utils.frPyObjects(segmentation, height, width)
    else:
        rle = segmentation
    return mask_utils.decode(rle)


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise DataError(f"annotation file {path} does not exist")
    try:
        dataset = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"annotation file {path} is not JSON: {exc}") from None
    if not isinstance(dataset, dict):
        raise DataError(f"annotation file {path} holds a {type(dataset).__name__}, not a COCO object")
    missing = [key for key in REQUIRED_KEYS if key not in dataset]
    if missing:
        raise DataError(f"annotation file {path} lacks {', '.join(repr(k) for k in missing)} "
                        f"(a COCO file has {', '.join(REQUIRED_KEYS)})")
    return dataset


def _require_keys(entries: list, keys: tuple[str, ...], *, what: str, path: Path) -> None:
    for entry in entries:
        missing = [key for key in keys if key not in entry]
        if missing:
            raise DataError(f"{what} {entry.get('id', entry)} in {path} lacks {', '.join(missing)}")


def _check_annotations(coco: COCO, *, path: Path, masks: bool) -> None:
    _require_keys(coco.dataset["images"], ("id", "file_name", "height", "width"), what="image", path=path)
    _require_keys(coco.dataset["categories"], ("id", "name"), what="category", path=path)
    _require_keys(coco.dataset["annotations"], ("id", "image_id", "category_id", "bbox")
                  + (("segmentation",) if masks else ()), what="annotation", path=path)
    for ann in coco.dataset["annotations"]:
        if ann["category_id"] not in coco.cats:
            raise DataError(f"annotation {ann['id']} in {path} has unknown category id {ann['category_id']} "
                            f"(categories: {sorted(coco.cats)})")
        if ann["image_id"] not in coco.imgs:
            raise DataError(f"annotation {ann['id']} in {path} refers to unknown image id {ann['image_id']}")
        _check_box(ann, image=coco.imgs[ann["image_id"]], path=path)


def _check_box(ann: dict, *, image: dict, path: Path) -> None:
    """A COCO box is four finite numbers (x, y, w, h) with a positive size that overlap the image."""
    box = ann["bbox"]
    where = f"annotation {ann['id']} in {path}"
    if (not isinstance(box, list) or len(box) != 4
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in box)):
        raise DataError(f"{where} has bbox {box!r}: expected four numbers x, y, w, h")
    if not all(math.isfinite(v) for v in box):
        raise DataError(f"{where} has a bbox with a non-finite coordinate: {box}")
    x, y, w, h = box
    if w <= 0 or h <= 0:
        raise DataError(f"{where} has a box of non-positive width or height: bbox {box} (x, y, w, h)")
    if x >= image["width"] or y >= image["height"] or x + w <= 0 or y + h <= 0:
        raise DataError(f"{where} has a box entirely outside its {image['width']}x{image['height']} image "
                        f"{image['id']}: bbox {box} (x, y, w, h)")


def _check_image_files(coco: COCO, *, images_dir: Path, path: Path) -> None:
    if not images_dir.is_dir():
        raise DataError(f"image folder {images_dir} (for {path}) does not exist")
    missing = [images_dir / image["file_name"] for image in coco.dataset["images"]
               if not os.path.isfile(images_dir / image["file_name"])]
    if missing:
        raise DataError(f"image {missing[0]} listed in {path} does not exist"
                        + (f" ({len(missing) - 1} more are missing)" if len(missing) > 1 else ""))


class CocoDetection(Dataset):
    def __init__(self, *, images_dir: str | os.PathLike, annotations: str | os.PathLike, train: bool,
                 masks: bool = True, keep_empty: bool = False):
        self.annotation_file = Path(annotations)
        self.images_dir = Path(images_dir)
        self.coco = COCO()
        self.coco.dataset = _read_json(self.annotation_file)
        with contextlib.redirect_stdout(io.StringIO()):
            self.coco.createIndex()
        _check_annotations(self.coco, path=self.annotation_file, masks=masks)
        _check_image_files(self.coco, images_dir=self.images_dir, path=self.annotation_file)
        self.category_ids = sorted(self.coco.cats)
        self.classes = [self.coco.cats[category]["name"] for category in self.category_ids]
        self._label_of = {category: label for label, category in enumerate(self.category_ids)}
        self.train = train
        self.masks = masks
        self.image_ids = [image_id for image_id in sorted(self.coco.imgs)
                          if not train or keep_empty or self._annotations(image_id)]
        if not self.image_ids:
            raise DataError(f"annotation file {self.annotation_file} has no images"
                            + (" with non-crowd annotations" if self.coco.imgs else ""))

    def _annotations(self, image_id: int) -> list[dict]:
        """The image's annotations; crowd regions are left out of training targets."""
        return [ann for ann in self.coco.imgToAnns[image_id] if not (self.train and ann.get("iscrowd", 0))]

    def __len__(self) -> int:
        return len(self.image_ids)

    def check_files(self) -> None:
        """Every image's header, and its size against the annotation file's (``file_checks``)."""
        infos = [self.coco.imgs[image_id] for image_id in self.image_ids]
        paths = [self.images_dir / info["file_name"] for info in infos]
        check_images(paths, what=str(self.annotation_file), skip_bad=False, claimed_by=str(self.annotation_file),
                     claimed_sizes={str(p): (info["width"], info["height"]) for p, info in zip(paths, infos)})

    def __getitem__(self, index: int) -> tuple:
        image_id = self.image_ids[index]
        info = self.coco.imgs[image_id]
        path = self.images_dir / info["file_name"]
        image = read_rgb(path)
        height, width = image.height, image.width
        check_claimed_size(path, size=(width, height), claimed=(info["width"], info["height"]),
                           claimed_by=str(self.annotation_file))
        annotations = self._annotations(image_id)
        xywh = torch.tensor([ann["bbox"] for ann in annotations], dtype=torch.float32).reshape(-1, 4)
        boxes = tv_tensors.BoundingBoxes(xywh, format="XYWH", canvas_size=(height, width))
        target = {"image_id": image_id, "orig_size": (height, width),
                  "boxes": F.clamp_bounding_boxes(F.convert_bounding_box_format(boxes, new_format="XYXY")),
                  "labels": torch.tensor([self._label_of[ann["category_id"]] for ann in annotations],
                                         dtype=torch.int64)}
        if self.masks:
            target["masks"] = tv_tensors.Mask(self._decode_masks(annotations, height=height, width=width))
        return image, target

    def _decode_masks(self, annotations: list[dict], *, height: int, width: int) -> torch.Tensor:
        masks = torch.zeros((len(annotations), height, width), dtype=torch.uint8)
        for mask, ann in zip(masks, annotations):
            decoded = decode_segmentation(ann["segmentation"], height=height, width=width)
            if decoded.shape != (height, width):
                raise DataError(f"annotation {ann['id']} in {self.annotation_file} has a mask of size "
                                f"{decoded.shape[1]}x{decoded.shape[0]} on a {width}x{height} image")
            mask.copy_(torch.from_numpy(decoded))
        return masks
