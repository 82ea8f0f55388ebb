"""Class-wise NMS that ``torch.export`` can trace."""
from __future__ import annotations

import torch
from torchvision import ops


@torch.library.custom_op("vislab::nms", mutates_args=())
def exportable_nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """``torchvision.ops.nms`` as an operator whose traced output size may be anything from 0:
    torchvision's own fake kernel declares it at least 2 (the deprecated ``create_unbacked_symint``),
    so an exported detector fails at run time on an image with fewer than two detections."""
    return ops.nms(boxes, scores, iou_threshold)


@exportable_nms.register_fake
def _(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    kept = torch.library.get_ctx().new_dynamic_size()
    return boxes.new_empty(kept, dtype=torch.long)


def batched_nms(boxes: torch.Tensor, scores: torch.Tensor, groups: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """``torchvision.ops.batched_nms``, except while ``torch.export`` traces the model: torchvision
    chooses between two algorithms by the number of boxes, a branch on a data-dependent size that
    export cannot follow. Then the offset form (torchvision's path for few boxes, the same result)
    runs: each group's boxes are shifted by the group id times the largest coordinate + 1, so
    boxes of different groups never overlap, and one NMS suppresses within groups only."""
    if not torch.compiler.is_exporting():
        return ops.batched_nms(boxes, scores, groups, iou_threshold)
    largest = torch.cat([boxes.flatten(), boxes.new_zeros(1)]).max()  # defined for no boxes too
    offsets = groups.to(boxes) * (largest + 1)
    return exportable_nms(boxes + offsets[:, None], scores, iou_threshold)
