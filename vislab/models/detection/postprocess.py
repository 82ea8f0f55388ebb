"""From network-input detections to detections on the original image."""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch.nn import functional as F


def paste_masks(mask_probs: torch.Tensor, boxes: torch.Tensor, *, image_size: tuple[int, int],
                threshold: float = 0.5) -> torch.Tensor:
    """Bool masks [N, H, W]: each M x M probability map resampled bilinearly onto the pixels its
    box covers (pixel centres at +0.5, as detectron2's grid-sample paste) and thresholded."""
    height, width = image_size
    masks = torch.zeros((len(boxes), height, width), dtype=torch.bool, device=boxes.device)
    for i, (probs, box) in enumerate(zip(mask_probs, boxes.tolist())):
        x0, y0, x1, y1 = box
        left, top = max(math.floor(x0), 0), max(math.floor(y0), 0)
        right, bottom = min(math.ceil(x1), width), min(math.ceil(y1), height)
        if right <= left or bottom <= top or x1 <= x0 or y1 <= y0:
            continue
        xs = (torch.arange(left, right, device=boxes.device) + 0.5 - x0) / (x1 - x0) * 2 - 1
        ys = (torch.arange(top, bottom, device=boxes.device) + 0.5 - y0) / (y1 - y0) * 2 - 1
        grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
        grid = torch.stack((grid_x, grid_y), dim=-1)[None].to(probs.dtype)
        pasted = F.grid_sample(probs[None, None], grid, mode="bilinear", align_corners=False)[0, 0]
        masks[i, top:bottom, left:right] = pasted >= threshold
    return masks


def to_original_size(detections: Sequence[dict], *, input_sizes: Sequence[tuple[int, int]],
                     original_sizes: Sequence[tuple[int, int]], mask_threshold: float = 0.5) -> list[dict]:
    """Boxes scaled from the resized input to the original image (and clipped); masks pasted at
    the original resolution."""
    results = []
    for detection, (in_h, in_w), (out_h, out_w) in zip(detections, input_sizes, original_sizes):
        scale = torch.tensor([out_w / in_w, out_h / in_h, out_w / in_w, out_h / in_h],
                             device=detection["boxes"].device)
        boxes = detection["boxes"] * scale
        boxes[:, 0::2] = boxes[:, 0::2].clamp(0, out_w)
        boxes[:, 1::2] = boxes[:, 1::2].clamp(0, out_h)
        result = {"boxes": boxes, "scores": detection["scores"], "labels": detection["labels"]}
        if "mask_probs" in detection:
            result["masks"] = paste_masks(detection["mask_probs"], boxes, image_size=(out_h, out_w),
                                          threshold=mask_threshold)
        results.append(result)
    return results
