"""pytorchvideo's hub models (``pytorchvideo.models.hub``) to vislab keys.

pytorchvideo builds every network as ``blocks.<i>``: the stem, the stages (``res_blocks.<j>``
with ``branch1_*`` the shortcut and ``branch2.{conv,norm}_{a,b,c}`` the bottleneck) and the head
(``proj`` the classifier). C2D and I3D have a parameter-free temporal pool between res2 and res3,
so stages are numbered by their order, not their block index. SlowFast nests both pathways
(``multipathway_blocks.0`` Slow, ``.1`` Fast) and the lateral connection after each
(``multipathway_fusion``). X3D's stem names its two convs the other way round (``conv_t`` is the
1x3x3 spatial conv), its SE sits in ``norm_b.1`` and its head in ``pool.{pre,post}_conv``; the
1x1x1 ``post_conv`` (lin5) becomes a linear layer.

The AVA detectors (``slow_r50_detection``, ``slowfast_r50_detection``) hold the classifier's
trunk under ``model.`` and the RoI head's linear layer as ``detection_head.proj``; the head's
pooling and RoIAlign have no tensors. Two layout differences that carry no weights: pytorchvideo
average-pools time with a fixed kernel (4 frames for Slow; 8 and 32 for SlowFast, inside the
trunk as ``blocks.5``), so it takes only clips of exactly that length, where vislab's head
averages whatever time the maps have; and its SlowFast takes the ``[slow, fast]`` clips, where
vislab picks the Slow frames from the one clip (``slow_pathway_frames``). Its RoIAlign is
torchvision's default, ``aligned=False``, which the converted weights record as
``roi_aligned=False``.
"""
from __future__ import annotations

import re

import torch

from vislab.convert.renaming import rename_keys
from vislab.models.backbones.slowfast import LATERAL_NAMES

BOTTLENECK_RULES = (
    (r"\.branch1_conv\.", ".downsample.0."),
    (r"\.branch1_norm\.", ".downsample.1."),
    (r"\.branch2\.conv_a\.", ".conv1."),
    (r"\.branch2\.norm_a\.", ".norm1."),
    (r"\.branch2\.conv_b\.", ".conv2."),
    (r"\.branch2\.norm_b\.0\.", ".norm2."),  # X3D: norm then SE in one Sequential
    (r"\.branch2\.norm_b\.1\.block\.0\.", ".se.fc1."),
    (r"\.branch2\.norm_b\.1\.block\.2\.", ".se.fc2."),
    (r"\.branch2\.norm_b\.", ".norm2."),
    (r"\.branch2\.conv_c\.", ".conv3."),
    (r"\.branch2\.norm_c\.", ".norm3."),
)
HEAD_RULE = (r"^blocks\.\d+\.proj\.", "head.fc.")
DETECTION_RULES = ((r"^model\.", ""), (r"^detection_head\.proj\.", "head.proj."))
DETECTION_OPTIONS = {"roi_aligned": False}  # torchvision RoIAlign's default, which pytorchvideo keeps


def _stage_names(state_dict: dict[str, torch.Tensor]) -> dict[str, str]:
    """``blocks.<i>`` index -> ``res2``..``res5``, by the order of the blocks holding stages."""
    stage = re.compile(r"blocks\.(\d+)\.res_blocks\.")
    indices = sorted({int(m.group(1)) for key in state_dict if (m := stage.match(key))})
    return {str(index): f"res{rank + 2}" for rank, index in enumerate(indices)}


def pytorchvideo_resnet3d(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``c2d_r50``, ``i3d_r50``, ``slow_r50`` (``create_resnet``)."""
    stages = _stage_names(state_dict)
    rules = (
        (r"^blocks\.0\.(conv|norm)\.", r"backbone.stem.\1."),
        (r"^blocks\.(\d+)\.res_blocks\.", lambda m: f"backbone.{stages[m.group(1)]}."),
        *BOTTLENECK_RULES,
        HEAD_RULE,
    )
    return rename_keys(state_dict, rules)


def pytorchvideo_slowfast(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``slowfast_r50``, ``slowfast_r101`` (``create_slowfast``)."""
    pathways = {"0": "slow", "1": "fast"}
    rules = (
        (r"^blocks\.0\.multipathway_blocks\.(\d)\.", lambda m: f"backbone.{pathways[m.group(1)]}.stem."),
        (r"^blocks\.(\d)\.multipathway_blocks\.(\d)\.res_blocks\.",
         lambda m: f"backbone.{pathways[m.group(2)]}.res{int(m.group(1)) + 1}."),
        (r"^blocks\.(\d)\.multipathway_fusion\.conv_fast_to_slow\.",
         lambda m: f"backbone.lateral.{LATERAL_NAMES[int(m.group(1))]}.conv."),
        (r"^blocks\.(\d)\.multipathway_fusion\.norm\.",
         lambda m: f"backbone.lateral.{LATERAL_NAMES[int(m.group(1))]}.norm."),
        *BOTTLENECK_RULES,
        HEAD_RULE,
    )
    return rename_keys(state_dict, rules)


def pytorchvideo_x3d(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``x3d_xs``, ``x3d_s``, ``x3d_m``, ``x3d_l`` (``create_x3d``)."""
    stages = _stage_names(state_dict)
    stem_convs = {"conv_t": "conv_xy", "conv_xy": "conv_t"}
    rules = (
        (r"^blocks\.0\.conv\.(conv_t|conv_xy)\.", lambda m: f"backbone.stem.{stem_convs[m.group(1)]}."),
        (r"^blocks\.0\.norm\.", "backbone.stem.norm."),
        (r"^blocks\.(\d+)\.res_blocks\.", lambda m: f"backbone.{stages[m.group(1)]}."),
        (r"^blocks\.\d+\.pool\.pre_conv\.", "backbone.conv5."),
        (r"^blocks\.\d+\.pool\.pre_norm\.", "backbone.norm5."),
        (r"^blocks\.\d+\.pool\.post_conv\.", "backbone.lin5."),
        *BOTTLENECK_RULES,
        HEAD_RULE,
    )
    converted = rename_keys(state_dict, rules)
    if "backbone.lin5.weight" in converted:
        converted["backbone.lin5.weight"] = converted["backbone.lin5.weight"].flatten(1)
    return converted


def pytorchvideo_resnet3d_detection(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``slow_r50_detection`` (``create_resnet_with_roi_head``)."""
    return pytorchvideo_resnet3d(rename_keys(state_dict, DETECTION_RULES))


def pytorchvideo_slowfast_detection(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``slowfast_r50_detection`` (``create_slowfast_with_roi_head``)."""
    return pytorchvideo_slowfast(rename_keys(state_dict, DETECTION_RULES))
