"""torchvision's ResNet/ResNeXt (``torchvision.models.resnet*``) to vislab keys."""
from __future__ import annotations

import torch

from vislab.convert.renaming import rename_keys

RESNET_RULES = (
    (r"^conv1\.", "backbone.stem.conv."),
    (r"^bn1\.", "backbone.stem.norm."),
    (r"^layer(\d)\.", lambda m: f"backbone.res{int(m.group(1)) + 1}."),
    (r"\.bn(\d)\.", r".norm\1."),
    (r"^fc\.", "head.fc."),
)


def torchvision_resnet(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return rename_keys(state_dict, RESNET_RULES, drop=(r"num_batches_tracked$",))
