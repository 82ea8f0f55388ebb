"""CocoEvaluator against small hand-built COCO annotation sets."""
from __future__ import annotations

import contextlib
import io
import json
import math

import pytest
import torch
from pycocotools import mask as mask_util
from pycocotools.coco import COCO

import vislab.evaluation.coco as coco_module
from vislab.engine.distributed import DistInfo
from vislab.evaluation.coco import CocoEvaluator

CATEGORIES = [{"id": 3, "name": "cat"}, {"id": 7, "name": "dog"}, {"id": 12, "name": "kite"}]
CATEGORY_IDS = [3, 7, 12]  # contiguous label i -> COCO id
IMAGES = [{"id": 1, "width": 64, "height": 48}, {"id": 5, "width": 160, "height": 120},
          {"id": 9, "width": 40, "height": 40}]
POLYGONS = [  # (image id, category id, polygon): small (< 32^2 px) and large (> 96^2 px) objects only
    (1, 3, [4, 4, 20, 4, 20, 20, 4, 20]),
    (1, 7, [30, 10, 50, 10, 40, 30]),
    (5, 3, [10, 10, 150, 10, 150, 110, 10, 110]),
    (5, 7, [2, 2, 12, 2, 12, 8, 2, 8]),
    (9, 3, [5, 5, 25, 8, 15, 30]),
]


def make_coco() -> COCO:
    annotations = []
    for ann_id, (image_id, category_id, polygon) in enumerate(POLYGONS, start=1):
        image = next(i for i in IMAGES if i["id"] == image_id)
        rle = mask_util.merge(mask_util.frPyObjects([polygon], image["height"], image["width"]))
        annotations.append({"id": ann_id, "image_id": image_id, "category_id": category_id,
                            "segmentation": [polygon], "area": float(mask_util.area(rle)),
                            "bbox": [float(v) for v in mask_util.toBbox(rle)], "iscrowd": 0})
    coco = COCO()
    coco.dataset = {"images": IMAGES, "annotations": annotations, "categories": CATEGORIES}
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def ground_truth_detections(coco: COCO, image_id: int) -> dict[str, torch.Tensor]:
    """The image's annotations as detections of score 1.0."""
    anns = coco.loadAnns(coco.getAnnIds(imgIds=[image_id]))
    image = coco.imgs[image_id]
    boxes = torch.tensor([[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in anns)]).reshape(-1, 4)
    masks = [torch.from_numpy(coco.annToMask(a)).bool() for a in anns]
    return {"boxes": boxes, "scores": torch.ones(len(anns)),
            "labels": torch.tensor([CATEGORY_IDS.index(a["category_id"]) for a in anns], dtype=torch.long),
            "masks": torch.stack(masks) if masks else torch.zeros(0, image["height"], image["width"], dtype=torch.bool)}


def no_detections(coco: COCO, image_id: int) -> dict[str, torch.Tensor]:
    image = coco.imgs[image_id]
    return {"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.long),
            "masks": torch.zeros(0, image["height"], image["width"], dtype=torch.bool)}


def evaluator_with(coco: COCO, detections: dict[int, dict[str, torch.Tensor]], **kwargs) -> CocoEvaluator:
    evaluator = CocoEvaluator(coco_gt=coco, category_ids=CATEGORY_IDS, **kwargs)
    for image_id, found in detections.items():
        evaluator.update(image_id=image_id, **found)
    return evaluator


def all_ground_truth(coco: COCO) -> dict[int, dict[str, torch.Tensor]]:
    return {image["id"]: ground_truth_detections(coco, image["id"]) for image in IMAGES}


def test_ground_truth_as_predictions_scores_one_and_missing_sizes_are_nan():
    coco = make_coco()
    metrics = evaluator_with(coco, all_ground_truth(coco)).evaluate()
    for iou_type in ("bbox", "segm"):
        for name in ("AP", "AP50", "AP75", "APs", "APl"):
            assert metrics[f"{iou_type}/{name}"] == pytest.approx(1.0), (iou_type, name)
        assert math.isnan(metrics[f"{iou_type}/APm"])  # no medium objects: COCOeval's -1


def test_shifted_box_lowers_box_ap_only():
    coco = make_coco()
    detections = all_ground_truth(coco)
    detections[5]["boxes"][0] += torch.tensor([40.0, 30.0, 40.0, 30.0])  # the large cat, IoU < 0.5
    metrics = evaluator_with(coco, detections).evaluate()
    assert metrics["bbox/AP"] < 0.9
    assert metrics["bbox/APl"] == pytest.approx(0.0)
    assert metrics["segm/AP"] == pytest.approx(1.0)


def test_wrong_class_lowers_ap():
    coco = make_coco()
    detections = all_ground_truth(coco)
    detections[1]["labels"] = torch.tensor([2, 2])  # both objects called "kite"
    metrics = evaluator_with(coco, detections).evaluate()
    assert metrics["bbox/AP"] < 0.9 and metrics["segm/AP"] < 0.9


def test_no_predictions_gives_zero_without_crashing(tmp_path):
    coco = make_coco()
    empty = {image["id"]: no_detections(coco, image["id"]) for image in IMAGES}
    for evaluator in (evaluator_with(coco, empty), evaluator_with(coco, {})):
        metrics = evaluator.evaluate(out_dir=tmp_path)
        assert len(metrics) == 12 and all(value == 0.0 for value in metrics.values())
        assert json.loads((tmp_path / "coco_results_segm.json").read_text()) == []


def test_results_json_and_per_category_table(tmp_path):
    coco = make_coco()
    detections = all_ground_truth(coco)
    detections[5] = {key: value[:1] for key, value in detections[5].items()}  # the small dog missed
    detections[1] = {key: value[:1] for key, value in detections[1].items()}  # the other dog missed
    evaluator = evaluator_with(coco, detections)
    metrics = evaluator.evaluate(out_dir=tmp_path)
    assert metrics == pytest.approx(evaluator.evaluate(), nan_ok=True)

    boxes = json.loads((tmp_path / "coco_results_bbox.json").read_text())
    masks = json.loads((tmp_path / "coco_results_segm.json").read_text())
    assert len(boxes) == len(masks) == 3
    first_cat = coco.loadAnns(coco.getAnnIds(imgIds=[1], catIds=[3]))[0]
    assert boxes[0] == {"image_id": 1, "category_id": 3, "bbox": pytest.approx(first_cat["bbox"]), "score": 1.0}
    assert "bbox" not in masks[0] and "area" not in masks[0]  # mask area sizes it; loadRes got copies
    rle = masks[0]["segmentation"]
    decoded = mask_util.decode(rle)  # str counts are what pycocotools reads back
    assert (decoded == coco.annToMask(first_cat)).all()

    lines = (tmp_path / "per_category_ap.md").read_text().splitlines()
    assert lines[0] == "| category | bbox AP | segm AP |"
    rows = {cells[0]: cells[1:] for cells in
            ([c.strip() for c in line.strip("|").split("|")] for line in lines[2:])}
    assert rows == {"cat": ["1.000", "1.000"], "dog": ["0.000", "0.000"], "kite": ["n/a", "n/a"]}


def test_only_updated_images_are_evaluated():
    coco = make_coco()
    detections = all_ground_truth(coco)
    subset = evaluator_with(coco, {1: detections[1], 5: detections[5]}).evaluate()
    assert subset["bbox/AP"] == pytest.approx(1.0) and subset["segm/AP"] == pytest.approx(1.0)
    with_missed_image = evaluator_with(coco, {1: detections[1], 5: detections[5], 9: no_detections(coco, 9)})
    assert with_missed_image.evaluate()["bbox/AP"] < 1.0


def test_merge_is_a_no_op_in_one_process_and_joins_processes(monkeypatch):
    coco = make_coco()
    detections = all_ground_truth(coco)
    alone = evaluator_with(coco, detections, iou_types=("bbox",))
    records = [dict(r) for r in alone.records["bbox"]]
    alone.merge(DistInfo())
    assert alone.records["bbox"] == records and alone.image_ids == {1, 5, 9}

    rank0 = evaluator_with(coco, {1: detections[1]}, iou_types=("bbox",))
    rank1 = evaluator_with(coco, {5: detections[5], 9: detections[9]}, iou_types=("bbox",))

    def all_gather_object(output, obj):
        output[:] = [obj, (sorted(rank1.image_ids), rank1.records)]

    monkeypatch.setattr(coco_module.torch.distributed, "all_gather_object", all_gather_object)
    rank0.merge(DistInfo(rank=0, world_size=2))
    assert rank0.image_ids == {1, 5, 9} and len(rank0.records["bbox"]) == len(POLYGONS)
    assert rank0.evaluate() == pytest.approx(alone.evaluate(), nan_ok=True)


def test_bad_input_names_the_problem():
    coco = make_coco()
    evaluator = CocoEvaluator(coco_gt=coco, category_ids=CATEGORY_IDS)
    good = ground_truth_detections(coco, 1)
    with pytest.raises(ValueError, match="image_id 4"):
        evaluator.update(image_id=4, **good)
    with pytest.raises(ValueError, match="labels"):
        evaluator.update(image_id=1, **{**good, "labels": torch.tensor([0, 3])})
    with pytest.raises(ValueError, match="original image size"):
        evaluator.update(image_id=1, **{**good, "masks": good["masks"][:, :40]})
    with pytest.raises(ValueError, match="category_ids"):
        CocoEvaluator(coco_gt=coco, category_ids=[3, 8])
