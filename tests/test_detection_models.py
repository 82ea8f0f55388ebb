"""R-CNN parts: anchors, box coding, matching, sampling, level assignment, heads, training,
freezing, and equivalence with torchvision's and detectron2's layouts."""
from __future__ import annotations

import math
import re

import pytest
import torch
from torchvision.models.detection.anchor_utils import AnchorGenerator as TorchvisionAnchors
from torchvision.models.detection.image_list import ImageList

from vislab.convert.detectron2 import detectron2_rcnn
from vislab.convert.torchvision_detection import TORCHVISION_RCNN_OPTIONS, torchvision_rcnn
from vislab.layers.norm import FrozenBatchNorm2d
from vislab.models import create_model
from vislab.models.detection.anchors import AnchorGenerator, cell_anchors
from vislab.models.detection.box_coder import SCALE_CLAMP, BoxCoder
from vislab.models.detection.heads import BoxHead, MaskHead
from vislab.models.detection.matcher import IGNORE, NEGATIVE, POSITIVE, Matcher, sample_labels
from vislab.models.detection.pooler import assign_levels
from vislab.models.detection.postprocess import paste_masks
from vislab.weights import load_state_dict

SMALL = "mask_rcnn_r18_fpn_gn_small"


def test_cell_anchors_have_the_size_and_aspect_ratios():
    anchors = cell_anchors(size=32, aspect_ratios=(0.5, 1.0, 2.0), round_corners=False)
    widths, heights = anchors[:, 2] - anchors[:, 0], anchors[:, 3] - anchors[:, 1]
    torch.testing.assert_close(widths * heights, torch.full((3,), 32.0**2))
    torch.testing.assert_close(heights / widths, torch.tensor([0.5, 1.0, 2.0]))
    torch.testing.assert_close(anchors[:, :2] + anchors[:, 2:], torch.zeros(3, 2))  # centred on 0


def test_anchor_grid_matches_torchvision_with_rounded_corners():
    sizes, strides = (32, 64), (4, 8)
    ours = AnchorGenerator(sizes=sizes, strides=strides, round_corners=True)([(6, 10), (3, 5)])
    theirs = TorchvisionAnchors(sizes=((32,), (64,)), aspect_ratios=((0.5, 1.0, 2.0),) * 2)
    image = ImageList(torch.zeros(1, 3, 24, 40), [(24, 40)])
    reference = theirs(image, [torch.zeros(1, 1, 6, 10), torch.zeros(1, 1, 3, 5)])[0]
    torch.testing.assert_close(torch.cat(ours), reference)
    assert ours[0].shape == (6 * 10 * 3, 4)
    torch.testing.assert_close(ours[0][3:6] - ours[0][:3], torch.tensor([[4.0, 0, 4, 0]] * 3))


def test_box_coding_round_trip_and_clamp():
    coder = BoxCoder(weights=(10, 10, 5, 5))
    reference = torch.tensor([[0.0, 0, 10, 20], [5, 5, 50, 30]])
    boxes = torch.tensor([[1.0, 2, 12, 18], [0, 10, 70, 25]])
    torch.testing.assert_close(coder.decode(coder.encode(boxes, reference), reference), boxes)
    huge = torch.tensor([[0.0, 0.0, 100.0, 100.0]])
    width = coder.decode(huge, reference[:1])[0, 2] - coder.decode(huge, reference[:1])[0, 0]
    assert width.item() == pytest.approx(10 * math.exp(SCALE_CLAMP), rel=1e-5)
    per_class = coder.decode(torch.zeros(2, 8), reference)  # two classes: both give the reference
    torch.testing.assert_close(per_class, reference.repeat(1, 2))


def test_matcher_thresholds_and_low_quality_matches():
    iou = torch.tensor([[0.9, 0.5, 0.2, 0.0], [0.1, 0.6, 0.25, 0.0]])
    matches, labels = Matcher(thresholds=(0.3, 0.7), allow_low_quality=False)(iou)
    assert matches.tolist()[:3] == [0, 1, 1]
    assert labels.tolist() == [POSITIVE, IGNORE, NEGATIVE, NEGATIVE]
    _, labels = Matcher(thresholds=(0.3, 0.7), allow_low_quality=True)(iou)
    assert labels.tolist() == [POSITIVE, POSITIVE, NEGATIVE, NEGATIVE]  # box 1's best (0.6) is kept
    _, labels = Matcher(thresholds=(0.5, 0.5), allow_low_quality=False)(torch.zeros(0, 3))
    assert labels.tolist() == [NEGATIVE] * 3


def test_sampler_respects_size_and_positive_fraction():
    labels = torch.tensor([1] * 50 + [0] * 500 + [-1] * 100)
    pos, neg = sample_labels(labels, num_samples=256, positive_fraction=0.25)
    assert (pos.numel(), neg.numel()) == (50, 206)
    assert (labels[pos] == 1).all() and (labels[neg] == 0).all()
    pos, neg = sample_labels(torch.tensor([1] * 300 + [0] * 10), num_samples=256, positive_fraction=0.5)
    assert (pos.numel(), neg.numel()) == (128, 10)


def test_fpn_level_assignment_follows_equation_1():
    sides = torch.tensor([224.0, 112, 448, 10, 2000, 223])
    boxes = torch.stack((torch.zeros(6), torch.zeros(6), sides, sides), dim=1)
    levels = assign_levels(boxes, min_level=2, max_level=5)
    assert (levels + 2).tolist() == [4, 3, 5, 2, 5, 3]


@pytest.mark.parametrize("kind,norm", [("2fc", "none"), ("4conv1fc", "GN")])
def test_head_output_shapes(kind, norm):
    head = BoxHead(channels=16, resolution=7, kind=kind, norm=norm, conv_dim=32, fc_dim=64)
    assert head(torch.randn(5, 16, 7, 7)).shape == (5, 64)
    mask_head = MaskHead(channels=16, num_classes=3, norm=norm, conv_dim=32)
    torch.nn.init.normal_(mask_head.predictor.bias)
    features, classes = torch.randn(5, 16, 14, 14), torch.tensor([0, 2, 1, 2, 0])
    logits = mask_head(features, classes)
    assert logits.shape == (5, 28, 28)
    # the per-class 1x1 predictor over all classes, then each region's class: the same logits
    all_classes = mask_head.predictor(torch.relu(mask_head.deconv(mask_head.convs(features))))
    torch.testing.assert_close(logits, all_classes[torch.arange(5), classes], rtol=1e-5, atol=1e-6)


def test_fpn_outputs_and_strides():
    model = create_model(SMALL, num_classes=3)
    shapes = model.fpn.output_shape()
    assert {name: spec.stride for name, spec in shapes.items()} == {"p2": 4, "p3": 8, "p4": 16, "p5": 32, "p6": 64}
    pyramid = model.fpn(model.backbone.forward_features(torch.randn(1, 3, 64, 96)))
    assert [tuple(p.shape[-2:]) for p in pyramid.values()] == [(16, 24), (8, 12), (4, 6), (2, 3), (1, 2)]


def test_paste_masks_fills_the_box():
    masks = paste_masks(torch.ones(1, 28, 28), torch.tensor([[10.0, 5.0, 30.0, 25.0]]), image_size=(40, 50))
    assert masks.shape == (1, 40, 50)
    assert masks[0, 5:25, 10:30].all() and masks.sum() == 20 * 20


def _square_scene(seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(2, 3, 64, 64, generator=generator) * 0.1
    targets = []
    for i, (x0, y0, side) in enumerate([(8, 8, 24), (30, 20, 28)]):
        images[i, :, y0:y0 + side, x0:x0 + side] += 2.0
        masks = torch.zeros(1, 64, 64, dtype=torch.uint8)
        masks[0, y0:y0 + side, x0:x0 + side] = 1
        targets.append({"boxes": torch.tensor([[x0, y0, x0 + side, y0 + side]], dtype=torch.float32),
                        "labels": torch.tensor([i]), "masks": masks})
    return images, targets


def test_a_short_training_run_lowers_the_loss():
    torch.manual_seed(0)
    model = create_model(SMALL, num_classes=2, backbone_options={"width": 0.25, "norm_groups": 8})
    images, targets = _square_scene()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
    losses = []
    for _ in range(20):
        loss_dict = model(images, [(64, 64)] * 2, targets)
        assert set(loss_dict) == {"loss_rpn_cls", "loss_rpn_loc", "loss_cls", "loss_box_reg", "loss_mask"}
        loss = sum(loss_dict.values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert sum(losses[-5:]) / 5 < 0.6 * sum(losses[:5]) / 5


def test_images_without_objects_train():
    model = create_model(SMALL, num_classes=2)
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long),
             "masks": torch.zeros(0, 64, 64, dtype=torch.uint8)}
    losses = model(torch.randn(1, 3, 64, 64), [(64, 64)], [empty])
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()


def test_freeze_at_and_frozen_backbone():
    model = create_model("mask_rcnn_r18_fpn_gn", num_classes=2, backbone_norm="BN", freeze_at=2)
    assert not any(p.requires_grad for p in model.backbone.stem.parameters())
    assert not any(p.requires_grad for p in model.backbone.res2.parameters())
    assert all(p.requires_grad for p in model.backbone.res3.parameters())
    assert isinstance(model.backbone.stem.norm, FrozenBatchNorm2d)
    frozen = create_model("mask_rcnn_r18_fpn_gn", num_classes=2, backbone_norm="BN", frozen_backbone=True).train()
    assert not any(p.requires_grad for p in frozen.backbone.parameters())
    assert not frozen.backbone.training and frozen.fpn.training
    with pytest.raises(ValueError, match="ResNet-style backbone"):
        create_model("mask_rcnn_r50_fpn", backbone="vit_s16", fpn_features=("last",), anchor_sizes=(32, 64))


def _randomise_torchvision(model, generator):
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if "running_var" in name:
                tensor.uniform_(0.5, 1.5, generator=generator)
            elif "running_mean" in name or (name.endswith("bias") and "body" in name):
                tensor.normal_(0, 0.1, generator=generator)
            elif name.endswith("weight") and tensor.ndim == 1:
                tensor.uniform_(0.1, 0.4, generator=generator)
        # confident class scores and visible box offsets, so there are many detections to compare
        model.roi_heads.box_predictor.cls_score.weight.normal_(0, 1.5, generator=generator)
        model.roi_heads.box_predictor.bbox_pred.weight.normal_(0, 0.5, generator=generator)
        model.rpn.head.cls_logits.weight.normal_(0, 0.1, generator=generator)


def test_converted_torchvision_mask_rcnn_gives_the_same_detections():
    from torchvision.models.detection import maskrcnn_resnet50_fpn

    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(1)
    theirs = maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=91).eval()
    _randomise_torchvision(theirs, generator)
    ours = create_model("mask_rcnn_r50_fpn", num_classes=90, **TORCHVISION_RCNN_OPTIONS).eval()
    load_state_dict(ours, torchvision_rcnn(theirs.state_dict()), strict=True)
    image = torch.nn.functional.interpolate(torch.randn(1, 3, 48, 64, generator=generator), size=(384, 512),
                                            mode="bilinear")
    with torch.no_grad():
        features = theirs.backbone(image)
        images = ImageList(image, [(384, 512)])
        proposals, _ = theirs.rpn(images, features)
        reference = theirs.roi_heads(features, proposals, images.image_sizes)[0][0]
        detections = ours(image, [(384, 512)])[0]
    assert len(reference["boxes"]) == len(detections["boxes"]) > 50
    torch.testing.assert_close(detections["boxes"], reference["boxes"], atol=1e-3, rtol=0)
    assert torch.equal(detections["labels"], reference["labels"] - 1)
    torch.testing.assert_close(detections["scores"], reference["scores"], atol=1e-5, rtol=0)
    torch.testing.assert_close(detections["mask_probs"], reference["masks"][:, 0], atol=1e-4, rtol=0)


def _detectron2_names(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """vislab names of the small all-GN model written the way detectron2 names them."""
    rules = [
        (r"^backbone\.stem\.conv\.", "backbone.bottom_up.stem.conv1."),
        (r"^backbone\.stem\.norm\.", "backbone.bottom_up.stem.conv1.norm."),
        (r"^backbone\.(res\d\.\d+)\.norm(\d)\.", r"backbone.bottom_up.\1.conv\2.norm."),
        (r"^backbone\.(res\d\.\d+)\.downsample\.0\.", r"backbone.bottom_up.\1.shortcut."),
        (r"^backbone\.(res\d\.\d+)\.downsample\.1\.", r"backbone.bottom_up.\1.shortcut.norm."),
        (r"^backbone\.(res\d\.\d+)\.conv", r"backbone.bottom_up.\1.conv"),
        (r"^fpn\.(lateral|output)\.(\d)\.0\.", lambda m: f"backbone.fpn_{m.group(1)}{int(m.group(2)) + 2}."),
        (r"^fpn\.(lateral|output)\.(\d)\.1\.", lambda m: f"backbone.fpn_{m.group(1)}{int(m.group(2)) + 2}.norm."),
        (r"^rpn\.head\.conv\.", "proposal_generator.rpn_head.conv."),
        (r"^rpn\.head\.objectness\.", "proposal_generator.rpn_head.objectness_logits."),
        (r"^rpn\.head\.deltas\.", "proposal_generator.rpn_head.anchor_deltas."),
        (r"^roi_heads\.box_head\.fcs\.0\.", "roi_heads.box_head.fc1."),
        (r"^roi_heads\.(box_head|mask_head)\.convs\.(\d+)\.", lambda m: (
            f"roi_heads.{m.group(1)}.{'conv' if m.group(1) == 'box_head' else 'mask_fcn'}{int(m.group(2)) // 3 + 1}."
            + ("norm." if int(m.group(2)) % 3 else ""))),
    ]
    renamed = {}
    for key, value in state_dict.items():
        for pattern, replacement in rules:
            key = re.sub(pattern, replacement, key)
        renamed[key] = value
    return {**renamed, "pixel_mean": torch.zeros(3, 1, 1), "pixel_std": torch.ones(3, 1, 1)}


def test_detectron2_layout_converts_to_vislab_names():
    model = create_model(SMALL, num_classes=3)
    reference = model.state_dict()
    converted = detectron2_rcnn(_detectron2_names(reference))
    assert set(converted) == set(reference)
    assert all(torch.equal(converted[k], reference[k]) for k in reference)


def test_stride_in_1x1_moves_the_stride():
    model = create_model("resnet50", stride_in_1x1=True)
    block = model.backbone.res3[0]
    assert (block.conv1.stride, block.conv2.stride) == ((2, 2), (1, 1))
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 1000)
