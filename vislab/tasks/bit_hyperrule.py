"""BiT-HyperRule (Kolesnikov et al., 2020, "Big Transfer", section 3.3).

Fine-tuning hyper-parameters chosen from the downstream data alone: the schedule length from
the number of examples, the resolution from the image size, and mixup only for larger sets.
The step counts follow the official big_transfer ``bit_hyperrule.py``: warm-up, then lr x0.1 at
each milestone, for 500 / 10k / 20k steps.
"""
from __future__ import annotations

from typing import Any

SMALL_DATASET = 20_000
MEDIUM_DATASET = 500_000
SMALL_IMAGE = 96 * 96


def hyperrule(*, num_examples: int, image_area: int) -> dict[str, Any]:
    """Config updates for a training set of ``num_examples`` images of ``image_area`` pixels."""
    if num_examples < SMALL_DATASET:
        warmup, milestones, total = 100, [200, 300, 400], 500
    elif num_examples < MEDIUM_DATASET:
        warmup, milestones, total = 500, [3000, 6000, 9000], 10_000
    else:
        warmup, milestones, total = 500, [6000, 12_000, 18_000], 20_000
    resize, crop = (160, 128) if image_area < SMALL_IMAGE else (512, 480)
    return {
        "train": {"steps": total},
        "schedule": {"name": "step", "warmup_steps": warmup, "warmup_factor": 0.0,
                     "milestone_steps": milestones, "gamma": 0.1},
        "data": {"train_resize": resize, "image_size": crop, "val_resize": crop,
                 "mixup_alpha": 0.0 if num_examples < SMALL_DATASET else 0.1},
    }


def rule_items(rule: dict[str, Any]) -> list[tuple[str, Any]]:
    """The rule as ``(dotted key, value)`` pairs."""
    return [(f"{section}.{key}", value) for section, values in rule.items() for key, value in values.items()]
