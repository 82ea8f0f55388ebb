"""Detection drawing and JSON export."""
from __future__ import annotations

import json

import numpy as np
import torch
from PIL import Image
from pycocotools import mask as mask_util

from vislab.visualize.detection import class_colour, detections_to_json, draw_detections

CLASS_NAMES = ["circle", "square"]


def detections() -> dict[str, torch.Tensor]:
    masks = torch.zeros(2, 48, 64, dtype=torch.bool)
    masks[0, 10:20, 10:30] = True
    masks[1, 30:40, 40:60] = True
    return {"boxes": torch.tensor([[10.0, 10.0, 30.0, 20.0], [40.0, 30.0, 60.0, 40.0]]),
            "labels": torch.tensor([1, 0]), "scores": torch.tensor([0.93, 0.2]), "masks": masks}


def test_draw_marks_kept_detections_only():
    image = Image.new("RGB", (64, 48), (128, 128, 128))
    drawn = draw_detections(image, **detections(), class_names=CLASS_NAMES, score_threshold=0.5)
    before, after = np.asarray(image), np.asarray(drawn)
    assert drawn.size == image.size
    assert tuple(after[15, 10]) == class_colour(1)  # the kept box's left edge, in its class colour
    assert (after[15, 20] != before[15, 20]).any()  # inside its mask: tinted
    assert (after[35, 50] == before[35, 50]).all() and (after[30:41, 40] == before[30:41, 40]).all()  # score 0.2


def test_json_is_serialisable_and_masks_round_trip():
    found = detections()
    exported = json.loads(json.dumps(detections_to_json(**found, class_names=CLASS_NAMES)))
    assert [d["label"] for d in exported] == ["square", "circle"]
    assert exported[0]["box"] == [10.0, 10.0, 30.0, 20.0] and abs(exported[0]["score"] - 0.93) < 1e-6
    assert (mask_util.decode(exported[1]["mask"]) == found["masks"][1].numpy()).all()
    assert "mask" not in detections_to_json(boxes=found["boxes"], labels=found["labels"], scores=found["scores"],
                                            class_names=CLASS_NAMES)[0]
