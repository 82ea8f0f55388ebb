"""Detections drawn on an image (boxes, masks, "name score" captions) or exported as JSON."""
from __future__ import annotations

import colorsys
from typing import Sequence

import torch
from PIL import Image
from torchvision.transforms.v2.functional import pil_to_tensor, to_pil_image
from torchvision.utils import draw_bounding_boxes, draw_segmentation_masks

from vislab.evaluation.coco import masks_to_rle

GOLDEN_RATIO_CONJUGATE = 0.618033988749895


def class_colour(index: int) -> tuple[int, int, int]:
    """A saturated colour per class; hues step by the golden ratio so neighbours differ."""
    r, g, b = colorsys.hsv_to_rgb((index * GOLDEN_RATIO_CONJUGATE) % 1.0, 0.85, 0.95)
    return int(r * 255), int(g * 255), int(b * 255)


def _class_name_list(labels: torch.Tensor, class_names: Sequence[str]) -> list[str]:
    label_list = labels.tolist()
    bad = [label for label in label_list if not 0 <= label < len(class_names)]
    if bad:
        raise ValueError(f"labels {bad} outside 0..{len(class_names) - 1} (class_names has {len(class_names)})")
    return [class_names[label] for label in label_list]


def draw_detections(image: Image.Image, *, boxes: torch.Tensor, labels: torch.Tensor, scores: torch.Tensor,
                    masks: torch.Tensor | None = None, class_names: Sequence[str],
                    score_threshold: float = 0.5) -> Image.Image:
    """``image`` with the detections scoring at least ``score_threshold``: translucent masks,
    then boxes captioned "name 0.93" (white on the box colour), one colour per class.
    ``boxes`` are xyxy pixels of ``image``; ``masks[N, H, W]`` bool/uint8 at its size."""
    keep = (scores.detach().cpu() >= score_threshold).nonzero().flatten()
    canvas = pil_to_tensor(image.convert("RGB"))
    if keep.numel() == 0:
        return to_pil_image(canvas)
    labels = labels.detach().cpu()[keep]
    names = _class_name_list(labels, class_names)
    colours = [class_colour(label) for label in labels.tolist()]
    if masks is not None:
        canvas = draw_segmentation_masks(canvas, masks.detach().cpu()[keep].bool(), alpha=0.5, colors=colours)
    captions = [f"{name} {score:.2f}" for name, score in zip(names, scores.detach().cpu()[keep].tolist())]
    canvas = draw_bounding_boxes(canvas, boxes.detach().cpu()[keep].float(), labels=captions, colors=colours,
                                 width=2, fill_labels=True, label_colors="white")
    return to_pil_image(canvas)


def detections_to_json(*, boxes: torch.Tensor, labels: torch.Tensor, scores: torch.Tensor,
                       class_names: Sequence[str], masks: torch.Tensor | None = None) -> list[dict]:
    """One JSON-ready dict per detection: ``box`` (xyxy floats), ``label`` (name), ``score`` and,
    with masks, ``mask`` as COCO RLE with str counts."""
    names = _class_name_list(labels.detach().cpu(), class_names)
    detections = [{"box": box, "label": name, "score": score}
                  for box, name, score in zip(boxes.detach().cpu().float().tolist(), names,
                                              scores.detach().cpu().float().tolist())]
    if masks is not None:
        for detection, rle in zip(detections, masks_to_rle(masks), strict=True):
            detection["mask"] = rle
    return detections
