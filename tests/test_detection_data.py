"""Detection data: the synthetic shapes generator, COCO loading and its errors, a COCO set's objects
as a classification set, the v2 detection transforms, detection collate, and `vislab data shapes`."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import tv_tensors

from vislab.cli import main
from vislab.config import ConfigError, load_config
from vislab.data.datasets.coco import CocoDetection, decode_segmentation
from vislab.data.datasets.coco_images import CocoObjects
from vislab.data.datasets.image_folder import DataError
from vislab.data.datasets.shapes import SHAPE_KINDS, ensure_shapes, generate_shapes
from vislab.data.loader import collate_detection
from vislab.data.sampler import SeededSamples
from vislab.data.transforms.detection import detection_eval_transform, detection_train_transform
from vislab.tasks.classification import build_dataset

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("shapes") / "set"
    generate_shapes(root, train=12, val=3, seed=0)
    return root


def _folder_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _tight_box(mask: torch.Tensor) -> list[float]:
    ys, xs = torch.nonzero(mask, as_tuple=True)
    return [xs.min().item(), ys.min().item(), xs.max().item() + 1, ys.max().item() + 1]


def test_generator_is_deterministic_and_seeded(shapes, tmp_path):
    generate_shapes(tmp_path / "again", train=12, val=3, seed=0)
    generate_shapes(tmp_path / "other", train=12, val=3, seed=1)
    reference = _folder_bytes(shapes)
    assert len(reference) == 12 + 3 + 2
    assert _folder_bytes(tmp_path / "again") == reference
    other = _folder_bytes(tmp_path / "other")
    assert other.keys() == reference.keys()
    assert other["annotations/train.json"] != reference["annotations/train.json"]
    assert other["train/000000.jpg"] != reference["train/000000.jpg"]


def test_shapes_json_loads_with_masks_matching_boxes_and_pixels(shapes):
    data = json.loads((shapes / "annotations" / "train.json").read_text())
    assert [c["id"] for c in data["categories"]] == list(range(1, len(SHAPE_KINDS) + 1))
    dataset = CocoDetection(images_dir=shapes / "train", annotations=shapes / "annotations" / "train.json",
                            train=True)
    assert dataset.classes == list(SHAPE_KINDS) and len(dataset) == 12
    sizes = set()
    for image, target in dataset:
        assert image.mode == "RGB" and target["orig_size"] == (image.height, image.width)
        sizes.add(target["orig_size"])
        boxes, masks = target["boxes"], target["masks"]
        assert isinstance(boxes, tv_tensors.BoundingBoxes) and isinstance(masks, tv_tensors.Mask)
        assert masks.dtype == torch.uint8 and masks.shape[1:] == (image.height, image.width)
        assert 1 <= len(boxes) == len(masks) == len(target["labels"]) <= 6
        for box, mask in zip(boxes, masks):
            assert _tight_box(mask) == box.tolist()
        # a shape's visible pixels are one colour, unlike the textured background around them
        pixels = torch.from_numpy(np.array(image)).float()
        for mask in masks:
            assert pixels[mask.bool()].std(dim=0).max() < 25
    assert len(sizes) > 1 and all(112 <= side <= 160 for size in sizes for side in size)


def test_polygon_and_rle_masks_both_occur_and_decode(shapes):
    data = json.loads((shapes / "annotations" / "train.json").read_text())
    image_sizes = {image["id"]: (image["height"], image["width"]) for image in data["images"]}
    polygons = [a for a in data["annotations"] if isinstance(a["segmentation"], list)]
    rles = [a for a in data["annotations"] if isinstance(a["segmentation"], dict)]
    assert polygons and rles
    for ann in polygons + rles:
        height, width = image_sizes[ann["image_id"]]
        mask = decode_segmentation(ann["segmentation"], height=height, width=width)
        assert mask.shape == (height, width) and mask.sum() == ann["area"]
    # uncompressed RLE (counts as a list, how COCO stores crowd regions) decodes to the same mask
    ann = rles[0]
    height, width = image_sizes[ann["image_id"]]
    mask = decode_segmentation(ann["segmentation"], height=height, width=width)
    flat = mask.ravel(order="F")
    changes = np.flatnonzero(np.diff(flat)) + 1
    counts = np.diff(np.concatenate([[0], changes, [flat.size]])).tolist()
    counts = ([0] + counts) if flat[0] else counts
    uncompressed = decode_segmentation({"size": [height, width], "counts": counts}, height=height, width=width)
    assert np.array_equal(uncompressed, mask)


def _write_coco(root: Path, *, images: list[tuple[int, int, int]], annotations: list[dict],
                categories: list[int], drop: str | None = None) -> Path:
    """A tiny COCO set: ``images`` as (id, height, width), files written beside the JSON."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    for image_id, height, width in images:
        Image.new("RGB", (width, height), (90, 120, 150)).save(root / "images" / f"{image_id}.png")
    dataset = {"images": [{"id": i, "file_name": f"{i}.png", "height": h, "width": w} for i, h, w in images],
               "annotations": annotations,
               "categories": [{"id": c, "name": f"class{c}"} for c in categories]}
    dataset.pop(drop, None)
    path = root / "annotations.json"
    path.write_text(json.dumps(dataset))
    return path


def _ann(ann_id: int, image_id: int, category_id: int, bbox: list[float], **extra) -> dict:
    x, y, w, h = bbox
    return {"id": ann_id, "image_id": image_id, "category_id": category_id, "bbox": bbox, "iscrowd": 0,
            "segmentation": [[x, y, x + w, y, x + w, y + h, x, y + h]], **extra}


def test_bad_annotation_files_are_named(tmp_path):
    def load(path, images_dir=tmp_path / "images"):
        return CocoDetection(images_dir=images_dir, annotations=path, train=True)

    with pytest.raises(DataError, match=f"{tmp_path / 'nope.json'} does not exist"):
        load(tmp_path / "nope.json")
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(DataError, match=f"{tmp_path / 'broken.json'} is not JSON"):
        load(tmp_path / "broken.json")
    path = _write_coco(tmp_path, images=[(1, 20, 30)], annotations=[], categories=[1], drop="categories")
    with pytest.raises(DataError, match=f"{path} lacks 'categories'"):
        load(path)
    path = _write_coco(tmp_path, images=[(1, 20, 30)], annotations=[_ann(5, 1, 1, [2, 2, 0, 4])], categories=[1])
    with pytest.raises(DataError, match=f"annotation 5 in {path} has a box of non-positive width"):
        load(path)
    for bbox, message in [([2, "2", 3, 4], r"has bbox \[2, '2', 3, 4\]: expected four numbers"),
                          ([2, 2, float("nan"), 4], "has a bbox with a non-finite coordinate"),
                          ([31, 2, 3, 4], "has a box entirely outside its 30x20 image 1"),
                          ([-9, 2, 8.5, 4], "has a box entirely outside")]:
        path = _write_coco(tmp_path, images=[(1, 20, 30)], annotations=[{**_ann(9, 1, 1, [2, 2, 3, 4]), "bbox": bbox}],
                           categories=[1])
        with pytest.raises(DataError, match=f"annotation 9 in {path} {message}"):
            load(path)
    path = _write_coco(tmp_path, images=[(1, 20, 30)], annotations=[_ann(8, 1, 4, [2, 2, 3, 4])], categories=[1])
    with pytest.raises(DataError, match=f"annotation 8 in {path} has unknown category id 4"):
        load(path)
    path = _write_coco(tmp_path, images=[(1, 20, 30)], annotations=[_ann(8, 1, 1, [2, 2, 3, 4])], categories=[1])
    (tmp_path / "images" / "1.png").unlink()
    with pytest.raises(DataError, match=f"image {tmp_path / 'images' / '1.png'} listed in {path} does not exist"):
        load(path)
    with pytest.raises(DataError, match=f"image folder {tmp_path / 'elsewhere'}"):
        load(path, images_dir=tmp_path / "elsewhere")


def test_empty_images_and_crowd_regions(tmp_path):
    crowd = _ann(2, 2, 1, [1, 1, 5, 5], iscrowd=1)
    crowd["segmentation"] = {"size": [20, 30], "counts": [21, 5, 15, 5, 15, 5, 15, 5, 15, 5, 494]}
    path = _write_coco(tmp_path, images=[(1, 20, 30), (2, 20, 30), (3, 20, 30)],
                       annotations=[_ann(1, 1, 1, [2, 2, 6, 8]), crowd], categories=[1])
    kwargs = {"images_dir": tmp_path / "images", "annotations": path}
    assert CocoDetection(train=True, **kwargs).image_ids == [1]
    assert CocoDetection(train=True, keep_empty=True, **kwargs).image_ids == [1, 2, 3]
    evaluation = CocoDetection(train=False, **kwargs)
    assert evaluation.image_ids == [1, 2, 3]
    _, crowd_target = evaluation[1]
    assert crowd_target["boxes"].tolist() == [[1, 1, 6, 6]] and crowd_target["masks"].sum() == 25
    _, empty_target = CocoDetection(train=True, keep_empty=True, **kwargs)[1]
    assert empty_target["boxes"].shape == (0, 4) and empty_target["masks"].shape == (0, 20, 30)
    assert empty_target["labels"].dtype == torch.int64 and len(empty_target["labels"]) == 0


def test_non_contiguous_category_ids(tmp_path):
    path = _write_coco(tmp_path, images=[(10, 24, 32)], categories=[7, 1, 3],
                       annotations=[_ann(1, 10, 7, [1, 2, 5, 5]), _ann(2, 10, 1, [8, 3, 4, 6]),
                                    _ann(3, 10, 3, [20, 10, 30, 30])])
    dataset = CocoDetection(images_dir=tmp_path / "images", annotations=path, train=True)
    assert dataset.category_ids == [1, 3, 7] and dataset.classes == ["class1", "class3", "class7"]
    _, target = dataset[0]
    assert target["image_id"] == 10 and target["labels"].tolist() == [2, 0, 1]
    # boxes are XYXY and clamped to the image (the third runs past the right and bottom edges)
    assert target["boxes"].tolist() == [[1, 2, 6, 7], [8, 3, 12, 9], [20, 10, 32, 24]]


def test_objects_become_square_crops_with_context_labelled_by_category(tmp_path):
    crowd = _ann(4, 1, 7, [0, 0, 10, 10], iscrowd=1)
    path = _write_coco(tmp_path, images=[(1, 40, 60)], categories=[7, 3],
                       annotations=[_ann(1, 1, 3, [10, 5, 20, 10]), _ann(2, 1, 7, [50, 30, 10, 10]),
                                    _ann(3, 1, 7, [30, 30, 4, 9]), crowd])  # 3: thinner than 8 px
    picture = Image.new("RGB", (60, 40), (90, 120, 150))
    picture.paste((255, 0, 0), (10, 5, 30, 15))
    picture.save(tmp_path / "images" / "1.png")
    objects = CocoObjects(images_dir=tmp_path / "images", annotations=path, context=1.5)
    assert len(objects) == 2 and objects.labels == [0, 1] and objects.classes == ["class3", "class7"]
    crop, label = objects[0]  # box centre (20, 10), side 1.5 x 20: x 5-35, y -5-25
    assert crop.size == (30, 30) and label == 0
    pixels = np.asarray(crop)
    assert pixels[15, 15].tolist() == [255, 0, 0] and pixels[15, 2].tolist() == [90, 120, 150]
    assert pixels[0, 15].tolist() == [0, 0, 0]  # above the image: filled with black
    crop, label = objects[1]  # centre (55, 35), side 15: reaches past the right and bottom edges
    assert crop.size == (15, 15) and label == 1 and np.asarray(crop)[-1, -1].tolist() == [0, 0, 0]
    with pytest.raises(ValueError, match="object_context=0.5"):
        CocoObjects(images_dir=tmp_path / "images", annotations=path, context=0.5)


def test_a_classification_config_reads_a_shapes_set_as_images_or_objects(tmp_path):
    overrides = ["data.name=shapes", f"data.root={tmp_path}", "data.synthetic_train=12", "data.synthetic_val=3"]
    images = build_dataset(load_config(None, overrides), "train")
    objects = build_dataset(load_config(None, [*overrides, "data.coco_examples=objects"]), "train")
    annotations = json.loads((tmp_path / "annotations" / "train.json").read_text())["annotations"]
    assert len(images) == 12 and isinstance(objects, CocoObjects)
    assert len(objects) == sum(min(a["bbox"][2:]) >= 8 for a in annotations) > 12
    with pytest.raises(ConfigError, match="data.coco_examples"):
        load_config(None, [*overrides, "data.coco_examples=boxes"])


def _square_sample(*, height: int = 40, width: int = 60, box: tuple[int, int, int, int] = (10, 5, 30, 25)):
    x1, y1, x2, y2 = box
    pixels = torch.zeros((height, width, 3), dtype=torch.uint8)
    pixels[y1:y2, x1:x2] = 255
    masks = torch.zeros((1, height, width), dtype=torch.uint8)
    masks[0, y1:y2, x1:x2] = 1
    return Image.fromarray(pixels.numpy()), {
        "image_id": 1, "orig_size": (height, width),
        "boxes": tv_tensors.BoundingBoxes([list(box)], dtype=torch.float32, format="XYXY",
                                           canvas_size=(height, width)),
        "labels": torch.tensor([3]), "masks": tv_tensors.Mask(masks)}


def test_train_flip_maps_boxes_and_masks_and_draws_from_torch():
    transform = detection_train_transform(min_sizes=[40], max_size=1000, hflip=True, lsj_size=None,
                                          lsj_scale=[0.1, 2.0], mean=MEAN, std=STD)
    seen = set()
    for seed in range(12):
        torch.manual_seed(seed)
        image, target = transform(*_square_sample())
        torch.manual_seed(seed)
        again, _ = transform(*_square_sample())
        assert torch.equal(image, again)
        box = target["boxes"][0].tolist()
        assert box in ([10, 5, 30, 25], [60 - 30, 5, 60 - 10, 25])
        assert _tight_box(target["masks"][0]) == box
        assert image.shape == (3, 40, 60) and image.dtype == torch.float32
        assert torch.allclose(image[:, 10, int(box[0]) + 2], torch.tensor((1 - 0.5) / 0.25))
        seen.add(box[0])
    assert seen == {10, 30}


def test_multiscale_and_eval_resize_scale_boxes():
    train = detection_train_transform(min_sizes=[80, 120], max_size=150, hflip=False, lsj_size=None,
                                      lsj_scale=[0.1, 2.0], mean=MEAN, std=STD)
    shapes_seen = set()
    for seed in range(8):
        torch.manual_seed(seed)
        image, target = train(*_square_sample())
        shapes_seen.add(tuple(image.shape))
        scale = image.shape[-1] / 60
        assert torch.allclose(target["boxes"][0], torch.tensor([10, 5, 30, 25]) * scale, atol=0.5)
    assert shapes_seen == {(3, 80, 120), (3, 100, 150)}  # 120 short side capped by the 150 long side
    image, target = detection_eval_transform(min_size=80, max_size=1000, mean=MEAN, std=STD)(*_square_sample())
    assert image.shape == (3, 80, 120) and target["boxes"].tolist() == [[20, 10, 60, 50]]
    assert _tight_box(target["masks"][0]) == [20, 10, 60, 50]
    image, _ = detection_eval_transform(min_size=64, max_size=64, mean=MEAN, std=STD)(*_square_sample())
    assert image.shape == (3, 42, 64)


def test_large_scale_jitter_gives_a_fixed_square_with_boxes_inside(shapes):
    transform = detection_train_transform(min_sizes=[800], max_size=1333, hflip=True, lsj_size=96,
                                          lsj_scale=[0.3, 2.0], mean=MEAN, std=STD)
    dataset = CocoDetection(images_dir=shapes / "train", annotations=shapes / "annotations" / "train.json",
                            train=True)
    samples = SeededSamples(dataset, transform, joint=True)
    dropped = 0
    for index in range(len(dataset)):
        image, target = samples[(index, 1000 + index)]
        assert image.shape == (3, 96, 96)
        boxes, masks = target["boxes"], target["masks"]
        assert masks.shape[1:] == (96, 96) and len(masks) == len(boxes) == len(target["labels"])
        assert ((boxes >= 0) & (boxes <= 96)).all()
        assert (boxes[:, 2:] - boxes[:, :2] >= 1).all()
        for box, mask in zip(boxes, masks):
            if mask.any():
                assert torch.equal(torch.tensor(_tight_box(mask), dtype=torch.float32), box)  # boxes recomputed
        dropped += len(dataset[index][1]["boxes"]) - len(boxes)
        again, _ = samples[(index, 1000 + index)]
        assert torch.equal(image, again)
    assert dropped > 0  # crops cut some shapes out, and sanitising removed them with their masks


def test_collate_pads_to_a_multiple_and_keeps_masks_unpadded():
    def sample(height, width, count):
        return tv_tensors.Image(torch.ones(3, height, width)), {
            "image_id": height, "boxes": tv_tensors.BoundingBoxes(torch.zeros(count, 4), format="XYXY",
                                                                  canvas_size=(height, width)),
            "labels": torch.zeros(count, dtype=torch.int64),
            "masks": tv_tensors.Mask(torch.zeros(count, height, width, dtype=torch.uint8))}

    batch = collate_detection([sample(50, 70, 2), None, sample(64, 33, 0)], size_divisibility=32)
    assert batch["skipped"] == 1 and batch["image_sizes"] == [(50, 70), (64, 33)]
    assert batch["images"].shape == (2, 3, 64, 96) and type(batch["images"]) is torch.Tensor
    assert batch["images"][0, :, :50, :70].eq(1).all() and batch["images"][0].sum() == 3 * 50 * 70
    assert batch["images"][1, :, :64, :33].eq(1).all() and batch["images"][1].sum() == 3 * 64 * 33
    first, second = batch["targets"]
    assert first["masks"].shape == (2, 50, 70) and second["masks"].shape == (0, 64, 33)
    assert all(type(t[key]) is torch.Tensor for t in batch["targets"] for key in ("boxes", "labels", "masks"))
    assert first["image_id"] == 50
    empty = collate_detection([None], size_divisibility=32)
    assert empty["skipped"] == 1 and empty["targets"] == [] and empty["images"].numel() == 0


def test_cli_generates_once_and_refuses_other_settings(tmp_path, capsys):
    out = tmp_path / "data" / "shapes"
    assert main(["data", "shapes", "--out", str(out), "--train", "3", "--val", "2", "--seed", "5"]) == 0
    printed = capsys.readouterr().out
    paths = ensure_shapes(out, train=3, val=2, seed=5)
    assert all(str(path) in printed and path.exists() for path in paths.values())
    assert len(list(paths["train_images"].glob("*.jpg"))) == 3 and len(list(paths["val_images"].glob("*.jpg"))) == 2
    assert [p.name for p in out.parent.iterdir()] == ["shapes"]  # no temporary folder left behind
    assert main(["data", "shapes", "--out", str(out), "--train", "3", "--val", "2", "--seed", "6"]) == 1
    assert "seed=5, not train=3, val=2, seed=6" in capsys.readouterr().err
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("x")
    with pytest.raises(DataError, match="is not a generated shapes set"):
        ensure_shapes(tmp_path / "mine", train=3, val=2, seed=5)


@pytest.mark.parametrize("lsj_size", [None, 64])
def test_an_image_too_thin_for_the_resize_is_padded_not_an_error(lsj_size):
    image = tv_tensors.Image(torch.full((3, 1, 900), 128, dtype=torch.uint8))  # 900 x 1: at 320 it has 0.36 rows
    target = {"boxes": tv_tensors.BoundingBoxes(torch.tensor([[10.0, 0.0, 400.0, 1.0]]), format="XYXY",
                                                canvas_size=(1, 900)), "labels": torch.tensor([2])}
    train = detection_train_transform(min_sizes=[128], max_size=320, hflip=False, lsj_size=lsj_size,
                                      lsj_scale=[0.5, 1.0], mean=[0.5] * 3, std=[0.25] * 3)
    evaluate = detection_eval_transform(min_size=128, max_size=320, mean=[0.5] * 3, std=[0.25] * 3)
    trained, _ = train(image, target)
    evaluated, kept = evaluate(image, target)
    assert min(trained.shape[-2:]) >= 1 and tuple(evaluated.shape[-2:]) == (1, 320)
    assert kept["boxes"][0, 2].item() == pytest.approx(400 * 320 / 900, rel=1e-4)  # coordinates unchanged by the pad
