"""Weight converters: other codebases' state dicts renamed into vislab's layout.

``CONVERTERS[(source, family)]`` maps a source state dict to vislab keys; the result is loaded
strictly into the registry model, so a checkpoint of another variant fails with the keys that
do not fit, and saved as safetensors with the model name in its metadata.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch

from vislab.convert.detectron2 import detectron2_rcnn, detectron2_vitdet
from vislab.convert.mae import mae_encoder, mae_pretrain
from vislab.convert.moco import moco_resnet, moco_vit
from vislab.convert.pytorchvideo import (DETECTION_OPTIONS, pytorchvideo_resnet3d, pytorchvideo_resnet3d_detection,
                                        pytorchvideo_slowfast, pytorchvideo_slowfast_detection, pytorchvideo_x3d)
from vislab.convert.pytorchvideo_mvit import pytorchvideo_mvit
from vislab.convert.timm_convnext import timm_convnext
from vislab.convert.timm_mvitv2 import timm_mvitv2
from vislab.convert.timm_resnetv2 import timm_resnetv2
from vislab.convert.timm_vit import timm_vit
from vislab.convert.torchvision import torchvision_resnet
from vislab.convert.torchvision_detection import TORCHVISION_RCNN_OPTIONS, torchvision_fcos, torchvision_rcnn
from vislab.models.registry import create_model, get_entry
from vislab.weights import WeightsError, load_state_dict, read_weights, save_weights

Converter = Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]]

CONVERTERS: dict[tuple[str, str], Converter] = {
    ("torchvision", "resnet"): torchvision_resnet,
    ("torchvision", "rcnn"): torchvision_rcnn,
    ("torchvision", "fcos"): torchvision_fcos,
    ("detectron2", "rcnn"): detectron2_rcnn,
    ("detectron2", "vitdet"): detectron2_vitdet,
    ("timm", "convnext"): timm_convnext,
    ("timm", "resnetv2"): timm_resnetv2,
    ("timm", "vit"): timm_vit,
    ("timm", "mvitv2"): timm_mvitv2,
    ("mae", "mae"): mae_pretrain,
    ("mae", "vit"): mae_encoder,
    ("moco", "resnet"): moco_resnet,
    ("moco", "vit"): moco_vit,
    ("pytorchvideo", "mvit_video"): pytorchvideo_mvit,
    ("pytorchvideo", "resnet3d"): pytorchvideo_resnet3d,
    ("pytorchvideo", "slowfast"): pytorchvideo_slowfast,
    ("pytorchvideo", "x3d"): pytorchvideo_x3d,
    ("pytorchvideo", "ava_resnet3d"): pytorchvideo_resnet3d_detection,
    ("pytorchvideo", "ava_slowfast"): pytorchvideo_slowfast_detection,
}

# options that reproduce the source's numerics, recorded with the converted weights
SOURCE_OPTIONS: dict[tuple[str, str], dict[str, Any]] = {
    ("torchvision", "rcnn"): TORCHVISION_RCNN_OPTIONS,
    ("pytorchvideo", "ava_resnet3d"): DETECTION_OPTIONS,
    ("pytorchvideo", "ava_slowfast"): DETECTION_OPTIONS,
}

# where the class count can be read, and how many of those rows are background
CLASS_ROWS = (("head.fc.weight", 0), ("roi_heads.box_predictor.cls_score.weight", 1),
              ("roi_heads.box_predictors.0.cls_score.weight", 1), ("head.cls_logits.weight", 0),
              ("head.proj.weight", 0))


def class_count(converted: dict[str, torch.Tensor]) -> int | None:
    """Classes of the converted classifier or detector; None for a headless encoder."""
    for key, background in CLASS_ROWS:
        if key in converted:
            return converted[key].shape[0] - background
    return None


def source_options(*, source: str, model_name: str, options: dict[str, Any] | None) -> dict[str, Any]:
    """The source's own numerics (e.g. torchvision's RoIAlign), overridden by ``options``."""
    return {**SOURCE_OPTIONS.get((source, get_entry(model_name).family), {}), **(options or {})}


def convert_state_dict(*, source: str, model_name: str, state_dict: dict[str, torch.Tensor],
                       options: dict[str, Any] | None = None):
    """The converted state dict and the vislab model it was checked against; ``options`` are
    the model's builder options for variants other than the registry default (e.g. a ViT with
    ``global_pool="avg"``)."""
    entry = get_entry(model_name)
    converter = CONVERTERS.get((source, entry.family))
    if converter is None:
        known = sorted(f"{s} -> {f}" for s, f in CONVERTERS)
        raise WeightsError(f"no converter from {source} for {model_name} (family {entry.family}); "
                           f"available: {', '.join(known)}")
    converted = converter(state_dict)
    num_classes = class_count(converted)
    model = create_model(model_name, num_classes=num_classes,
                         **source_options(source=source, model_name=model_name, options=options))
    described = f"{source} weights converted for {model_name}"
    if num_classes is None and hasattr(model, "head"):  # a self-supervised encoder: its backbone must fit
        backbone_state = {key.removeprefix("backbone."): value for key, value in converted.items()}
        load_state_dict(model.backbone, backbone_state, strict=True, source=f"{described} (backbone)")
    else:
        load_state_dict(model, converted, strict=True, source=described)
    return converted, model


def convert_file(*, source: str, model_name: str, src: str | Path, dst: str | Path,
                 options: dict[str, Any] | None = None, force: bool = False) -> str:
    """Convert ``src`` to vislab weights at ``dst``, in the format its extension names: safetensors,
    whose metadata records the model name, class count and options (so ``vislab predict`` can
    rebuild the model), or ``.pth`` / ``.pt``. Writing over ``src`` or an existing file is refused
    unless ``force``."""
    src, dst = Path(src), Path(dst)
    if dst.exists() and dst.resolve() == src.resolve():
        raise WeightsError(f"refusing to convert {src} onto itself: name another output file")
    if dst.exists() and not force:
        raise WeightsError(f"{dst} exists; pass --force to overwrite it")
    state_dict, _ = read_weights(src)
    converted, _ = convert_state_dict(source=source, model_name=model_name, state_dict=state_dict,
                                      options=options)
    num_classes = class_count(converted)
    save_weights(converted, dst, metadata={"model": model_name, "num_classes": num_classes,
                                           "options": source_options(source=source, model_name=model_name,
                                                                     options=options),
                                           "source": f"{source}:{Path(src).name}"})
    return f"{len(converted)} tensors for {model_name}" + (f" ({num_classes} classes)" if num_classes else " (no classifier)")
