"""I3D inflation: a 2-D ResNet's weights as the initialisation of a 3-D ResNet.

Carreira & Zisserman (2017, "Quo Vadis, Action Recognition?", section 2.4): each ``k x k`` kernel
is repeated ``t`` times along a new temporal axis and divided by ``t``, so on a clip that repeats
one image every temporal conv returns the 2-D conv's response, and the 3-D network computes the
2-D network's features (exactly away from the clip's first and last frames, where the temporal
convs see zero padding).
"""
from __future__ import annotations

import torch
from torch import nn


def inflate_2d_state_dict(state_2d: dict[str, torch.Tensor], model_3d: nn.Module) -> dict[str, torch.Tensor]:
    """``model_3d``'s state dict with every tensor of ``state_2d`` (vislab names, e.g. a 2-D
    ``resnet50`` converted with ``vislab.convert.torchvision``) put in place, 4-D conv kernels
    inflated over the 3-D kernel's temporal size. Tensors the 2-D network lacks (non-local blocks)
    keep ``model_3d``'s values; drop ``head.*`` from ``state_2d`` to keep a head of another class
    count. A 2-D tensor with no place in ``model_3d``, or of another shape, is an error naming it."""
    target = model_3d.state_dict()
    unexpected = sorted(key for key in state_2d if key not in target)
    if unexpected:
        raise ValueError(f"2-D weights have no place in {type(model_3d).__name__}: {', '.join(unexpected)}")
    inflated, mismatched = dict(target), []
    for key, value in state_2d.items():
        shape = target[key].shape
        if value.dim() == 4 and len(shape) == 5 and value.shape == shape[:2] + shape[3:]:
            value = value.unsqueeze(2).repeat(1, 1, shape[2], 1, 1) / shape[2]
        elif value.shape != shape:
            mismatched.append(f"{key} (2-D {tuple(value.shape)} vs 3-D {tuple(shape)})")
            continue
        inflated[key] = value.to(target[key].dtype)
    if mismatched:
        raise ValueError(f"2-D weights do not fit {type(model_3d).__name__}: {', '.join(mismatched)}")
    return inflated
