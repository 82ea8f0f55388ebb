"""COCO box and mask AP through pycocotools' COCOeval, gathered across processes.

Detections are turned into COCO result records the way detectron2's ``instances_to_coco_json``
does (xywh boxes, category ids, RLE masks with str counts); mask records leave the box out so
that COCOeval sizes them (small / medium / large) by mask area, not box area.
"""
from __future__ import annotations

import contextlib
import io
import json
import math
from pathlib import Path
from typing import Sequence

import numpy as np
import pycocotools.mask as mask_util
import torch
import torch.distributed
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from vislab.engine.distributed import DistInfo
from vislab.utils.files import atomic_write_text

IOU_TYPES = ("bbox", "segm")
SUMMARY_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl")  # COCOeval.stats[0:6]


def masks_to_rle(masks: torch.Tensor) -> list[dict]:
    """COCO RLE (counts as str, JSON-ready) of each bool/uint8 mask in ``masks[N, H, W]``."""
    if masks.dtype not in (torch.bool, torch.uint8):
        raise ValueError(f"masks must be bool or uint8 (0/1), got dtype {masks.dtype}")
    if masks.ndim != 3:
        raise ValueError(f"masks must have shape [N, H, W], got {tuple(masks.shape)}")
    if masks.shape[0] == 0:
        return []
    stacked = np.asfortranarray(masks.detach().cpu().numpy().astype(np.uint8).transpose(1, 2, 0))
    rles = mask_util.encode(stacked)
    return [{"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")} for rle in rles]


def per_category_ap(coco_eval: COCOeval) -> dict[str, float]:
    """AP of each category (name -> fraction) over IoU 0.50:0.95, area all, 100 detections;
    precision entries of -1 (no ground truth) are left out, NaN when all of them are."""
    params = coco_eval.params
    precision = coco_eval.eval["precision"]  # [IoU, recall, category, area, max detections]
    area, max_dets = params.areaRngLbl.index("all"), params.maxDets.index(100)
    result = {}
    for k, category_id in enumerate(params.catIds):
        values = precision[:, :, k, area, max_dets]
        values = values[values > -1]
        name = coco_eval.cocoGt.cats[category_id]["name"]
        result[name] = float(values.mean()) if values.size else float("nan")
    return result


class CocoEvaluator:
    """Collects detections of the evaluated images and scores them against ``coco_gt``.

    Only the images passed to ``update`` are evaluated (COCOeval ``params.imgIds``), so a
    subset of the annotation file can be evaluated. Call ``merge`` once on every process
    before ``evaluate``.
    """

    def __init__(self, *, coco_gt: COCO, category_ids: Sequence[int],
                 iou_types: Sequence[str] = IOU_TYPES):
        unknown_types = [t for t in iou_types if t not in IOU_TYPES]
        if unknown_types:
            raise ValueError(f"iou_types {unknown_types} unknown; choose from {list(IOU_TYPES)}")
        unknown_ids = [c for c in category_ids if c not in coco_gt.cats]
        if unknown_ids:
            raise ValueError(f"category_ids {unknown_ids} are not categories of the ground truth "
                             f"(it has {sorted(coco_gt.cats)})")
        self.coco_gt = coco_gt
        self.category_ids = list(category_ids)
        self.iou_types = tuple(iou_types)
        self.image_ids: set[int] = set()
        self.records: dict[str, list[dict]] = {t: [] for t in self.iou_types}

    def update(self, *, image_id: int, boxes: torch.Tensor, scores: torch.Tensor,
               labels: torch.Tensor, masks: torch.Tensor | None = None) -> None:
        """Add one image's detections: ``boxes[N, 4]`` xyxy in original image pixels, ``labels``
        contiguous 0..C-1, ``masks[N, H, W]`` at the original image size (needed for segm)."""
        image_id = int(image_id)
        image = self.coco_gt.imgs.get(image_id)
        if image is None:
            raise ValueError(f"image_id {image_id} is not an image of the ground truth")
        labels = labels.detach().cpu()
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= len(self.category_ids)):
            raise ValueError(f"image_id {image_id}: labels {labels.tolist()} outside "
                             f"0..{len(self.category_ids) - 1}")
        if boxes.shape != (labels.numel(), 4) or scores.shape != labels.shape:
            raise ValueError(f"image_id {image_id}: boxes {tuple(boxes.shape)}, scores {tuple(scores.shape)} "
                             f"and labels {tuple(labels.shape)} do not describe the same N detections")
        category_ids = [self.category_ids[i] for i in labels.tolist()]
        score_list = scores.detach().cpu().float().tolist()
        self.image_ids.add(image_id)
        if "bbox" in self.iou_types:
            xyxy = boxes.detach().cpu().double()
            xywh = torch.cat([xyxy[:, :2], xyxy[:, 2:] - xyxy[:, :2]], dim=1).tolist()
            self.records["bbox"].extend(
                {"image_id": image_id, "category_id": c, "bbox": b, "score": s}
                for c, b, s in zip(category_ids, xywh, score_list))
        if "segm" in self.iou_types:
            if masks is None:
                raise ValueError(f"image_id {image_id}: iou_types has segm but no masks were given")
            size = (image["height"], image["width"])
            if masks.shape[0] != len(category_ids) or tuple(masks.shape[1:]) != size:
                raise ValueError(f"image_id {image_id}: masks of shape {tuple(masks.shape)}, expected "
                                 f"[{len(category_ids)}, {size[0]}, {size[1]}] (the original image size)")
            self.records["segm"].extend(
                {"image_id": image_id, "category_id": c, "segmentation": rle, "score": s}
                for c, rle, s in zip(category_ids, masks_to_rle(masks), score_list))

    def merge(self, dist: DistInfo) -> None:
        """Give every process the records and image ids of all processes."""
        if not dist.enabled:
            return
        gathered: list = [None] * dist.world_size
        torch.distributed.all_gather_object(gathered, (sorted(self.image_ids), self.records))
        self.image_ids = {i for image_ids, _ in gathered for i in image_ids}
        self.records = {t: [r for _, records in gathered for r in records[t]] for t in self.iou_types}

    def evaluate(self, *, out_dir: Path | None = None) -> dict[str, float]:
        """``"<iou type>/AP"``, ``/AP50``, ``/AP75``, ``/APs``, ``/APm``, ``/APl`` as fractions
        (NaN where no ground truth has that size; 0.0 for an iou type without detections).
        With ``out_dir``: ``coco_results_<iou type>.json`` and ``per_category_ap.md``."""
        metrics: dict[str, float] = {}
        per_category: dict[str, dict[str, float]] = {}
        for iou_type in self.iou_types:
            coco_eval = self._run_cocoeval(iou_type) if self.records[iou_type] else None
            for i, name in enumerate(SUMMARY_NAMES):
                value = float(coco_eval.stats[i]) if coco_eval is not None else 0.0
                metrics[f"{iou_type}/{name}"] = float("nan") if value == -1 else value
            per_category[iou_type] = (per_category_ap(coco_eval) if coco_eval is not None else
                                      dict.fromkeys(self._category_names(), 0.0))
        if out_dir is not None:
            out_dir = Path(out_dir)
            for iou_type in self.iou_types:
                atomic_write_text(out_dir / f"coco_results_{iou_type}.json", json.dumps(self.records[iou_type]))
            atomic_write_text(out_dir / "per_category_ap.md", per_category_table(per_category))
        return metrics

    def _category_names(self) -> list[str]:
        """Names in COCOeval's default category order (sorted ground-truth ids)."""
        return [self.coco_gt.cats[c]["name"] for c in sorted(self.coco_gt.cats)]

    def _run_cocoeval(self, iou_type: str) -> COCOeval:
        # loadRes adds keys to the records it is given, so it gets copies
        results = [dict(record) for record in self.records[iou_type]]
        with contextlib.redirect_stdout(io.StringIO()):
            coco_dt = self.coco_gt.loadRes(results)
            coco_eval = COCOeval(self.coco_gt, coco_dt, iouType=iou_type)
            coco_eval.params.imgIds = sorted(self.image_ids)
            coco_eval.evaluate()
            coco_eval.accumulate()
            coco_eval.summarize()
        return coco_eval


def per_category_table(per_category: dict[str, dict[str, float]]) -> str:
    """Markdown table: one row per category, one AP column per iou type; ``n/a`` for NaN."""
    iou_types = list(per_category)
    names = list(next(iter(per_category.values()))) if per_category else []
    lines = ["| category | " + " | ".join(f"{t} AP" for t in iou_types) + " |",
             "|:--|" + "--:|" * len(iou_types)]
    for name in names:
        cells = [per_category[t][name] for t in iou_types]
        lines.append(f"| {name} | " + " | ".join("n/a" if math.isnan(v) else f"{v:.3f}" for v in cells) + " |")
    return "\n".join(lines) + "\n"
