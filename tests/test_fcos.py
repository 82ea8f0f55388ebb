"""FCOS (vislab/models/detection/fcos.py): target assignment and losses on hand-made cases,
equivalence with torchvision's ``fcos_resnet50_fpn`` after conversion, and the R-PAFPN neck."""
from __future__ import annotations

import math

import pytest
import torch
from torchvision.ops import generalized_box_iou_loss, sigmoid_focal_loss

import vislab
from vislab.convert import convert_file
from vislab.models.necks.pafpn import RPAFPN
from vislab.models.shape_spec import ShapeSpec
from vislab.weights import load_weights

SMALL = dict(backbone="resnet18", backbone_options={"width": 0.25, "norm_groups": 8}, backbone_norm="GN", freeze_at=0,
             fpn_channels=32, fpn_norm="GN")


def small_fcos(**options):
    torch.manual_seed(0)
    return vislab.create_model("fcos_r50_fpn", num_classes=3, **{**SMALL, **options})


def test_points_match_by_centre_region_size_range_and_smallest_box():
    model = small_fcos(center_sampling_radius=1.5)
    anchors = model.anchor_generator([(8, 8), (4, 4), (2, 2), (1, 1), (1, 1)])  # a 64x64 image, strides 8..128
    # both boxes are centred on (20, 20); within 1.5 strides (12 px) of it on P3 lie the points at
    # x, y in {16, 24}, inside both boxes: the smaller box 0 takes them. Their largest distances
    # (< 40 px) belong to P3 (0-64), so no coarser point matches.
    boxes = torch.tensor([[10.0, 10.0, 30.0, 30.0], [0.0, 0.0, 40.0, 40.0]])
    matches = model.match(anchors, boxes)
    p3 = matches[:64].view(8, 8)  # row y / 8, column x / 8
    expected = torch.full((8, 8), -1)
    expected[2:4, 2:4] = 0
    assert torch.equal(p3, expected)
    assert (matches[64:] == -1).all()
    alone = model.match(anchors, boxes[1:])[:64].view(8, 8)  # without box 0, box 1 takes the same points
    assert torch.equal(alone[2:4, 2:4], torch.zeros(2, 2, dtype=torch.int64))
    # a 160-pixel box's centre points reach 80 px to its sides: P4's range (64-128), not P3's
    large = torch.tensor([[0.0, 0.0, 160.0, 160.0]])
    big_anchors = model.anchor_generator([(20, 20), (10, 10), (5, 5), (3, 3), (2, 2)])
    matched = (model.match(big_anchors, large) >= 0).nonzero().squeeze(1)
    assert matched.numel() > 0 and matched.min() >= 400 and matched.max() < 500


def test_losses_on_a_hand_made_case():
    """One image, one box matched by exactly known points: focal loss over every point and class,
    GIoU of the decoded boxes and centre-ness BCE, each divided by the foreground count."""
    model = small_fcos()
    anchors = model.anchor_generator([(4, 4), (2, 2), (1, 1), (1, 1), (1, 1)])
    total = sum(len(a) for a in anchors)
    box = torch.tensor([[4.0, 4.0, 20.0, 28.0]])
    matches = model.match(anchors, box)
    fg = (matches >= 0).nonzero().squeeze(1)
    assert fg.numel() > 0
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(1, total, 3, generator=generator)
    distances = torch.rand(1, total, 4, generator=generator) * 2
    centerness = torch.randn(1, total, generator=generator)
    losses = model._losses(logits, distances, centerness, anchors, [{"boxes": box, "labels": torch.tensor([1])}])
    targets = torch.zeros_like(logits)
    targets[0, fg, 1] = 1
    points = torch.cat(anchors)[fg]
    centres, sizes = (points[:, :2] + points[:, 2:]) / 2, (points[:, 2:] - points[:, :2])
    d = distances[0, fg]
    predicted = torch.cat([centres - d[:, :2] * sizes, centres + d[:, 2:] * sizes], dim=1)
    l, t = centres[:, 0] - 4, centres[:, 1] - 4
    r, b = 20 - centres[:, 0], 28 - centres[:, 1]
    ctr = torch.sqrt(torch.minimum(l, r) / torch.maximum(l, r) * torch.minimum(t, b) / torch.maximum(t, b))
    n = fg.numel()
    torch.testing.assert_close(losses["loss_cls"], sigmoid_focal_loss(logits, targets, reduction="sum") / n)
    torch.testing.assert_close(losses["loss_box_reg"],
                               generalized_box_iou_loss(predicted, box.expand(n, 4), reduction="sum") / n)
    torch.testing.assert_close(losses["loss_centerness"], torch.nn.functional.binary_cross_entropy_with_logits(
        centerness[0, fg], ctr, reduction="sum") / n)


def test_converted_torchvision_fcos_gives_its_detections(tmp_path):
    from torchvision.models.detection import fcos_resnet50_fpn

    torch.manual_seed(0)
    theirs = fcos_resnet50_fpn(weights=None, weights_backbone=None, num_classes=91).eval()
    with torch.no_grad():  # confident, varied scores so that detections pass the 0.2 threshold
        theirs.head.classification_head.cls_logits.weight.normal_(0, 0.1)
        theirs.head.classification_head.cls_logits.bias.zero_()
        theirs.head.regression_head.bbox_ctrness.bias.fill_(1.0)
        theirs.head.regression_head.bbox_reg.weight.normal_(0, 0.05)
    src, dst = tmp_path / "fcos.pth", tmp_path / "fcos.safetensors"
    torch.save(theirs.state_dict(), src)
    convert_file(source="torchvision", model_name="fcos_r50_fpn", src=src, dst=dst)
    ours = vislab.create_model("fcos_r50_fpn", num_classes=90).eval()
    assert load_weights(ours, dst).ok
    # sides divisible by 128: torchvision places a level's points at image size // level size,
    # which is the level's stride only then (vislab always uses the stride)
    images = torch.randn(1, 3, 256, 384, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = _torchvision_detections(theirs, images)[0]
        got = ours(images, [(256, 384)])[0]
    assert len(expected["boxes"]) == len(got["boxes"]) > 10
    expected = {**expected, "labels": expected["labels"] - 1}  # torchvision's background logit dropped
    ours, theirs = _canonical(got), _canonical(expected)  # detections of equal score in one order
    assert torch.equal(ours["labels"], theirs["labels"])
    torch.testing.assert_close(ours["scores"], theirs["scores"], atol=1e-5, rtol=0)
    torch.testing.assert_close(ours["boxes"], theirs["boxes"], atol=1e-3, rtol=0)


def _torchvision_detections(model, images: torch.Tensor) -> list[dict]:
    """torchvision's FCOS on normalised images without its GeneralizedRCNNTransform (resizing,
    normalisation), as its ``forward`` runs the rest."""
    from torchvision.models.detection.image_list import ImageList

    features = list(model.backbone(images).values())
    outputs = model.head(features)
    anchors = model.anchor_generator(ImageList(images, [tuple(images.shape[-2:])] * len(images)), features)
    counts = [f.shape[-2] * f.shape[-1] for f in features]
    split = {name: list(value.split(counts, dim=1)) for name, value in outputs.items()}
    return model.postprocess_detections(split, [list(a.split(counts)) for a in anchors],
                                        [tuple(images.shape[-2:])] * len(images))


def _canonical(detections: dict) -> dict:
    keys = [(-round(score, 4), label, *(round(v, 1) for v in box))
            for score, label, box in zip(detections["scores"].tolist(), detections["labels"].tolist(),
                                         detections["boxes"].tolist())]
    order = sorted(range(len(keys)), key=keys.__getitem__)
    return {name: value[order] for name, value in detections.items()}


def test_torchvision_layout_parameter_counts():
    from vislab.models.complexity import count_params, on_meta

    assert count_params(on_meta(lambda: vislab.create_model("fcos_r50_fpn", num_classes=91))) == 32_269_600
    plain_bn = on_meta(lambda: vislab.create_model("fcos_r50_fpn", num_classes=91, backbone_norm="BN", freeze_at=0))
    assert count_params(plain_bn) == 32_322_720


def test_fcos_trains_and_detects_in_the_contract_format():
    model = small_fcos(score_threshold=0.0).train()
    images = torch.randn(2, 3, 96, 128)
    targets = [{"boxes": torch.tensor([[8.0, 8.0, 40.0, 60.0]]), "labels": torch.tensor([2])},
               {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}]
    losses = model(images, [(96, 128), (80, 100)], targets)
    assert set(losses) == {"loss_cls", "loss_box_reg", "loss_centerness"}
    sum(losses.values()).backward()
    model.eval()
    with torch.no_grad():
        detections = model(images, [(96, 128), (80, 100)])
    assert all(set(d) == {"boxes", "scores", "labels"} for d in detections)
    assert 0 < len(detections[1]["boxes"]) <= 100 and detections[1]["boxes"][:, 2].max() <= 100


def test_nasfpn_neck_over_a_frozen_trunk_trains_the_decoder_only():
    """The heavier decoder of detection on a frozen trunk: NAS-FPN's p3-p7 feed the FCOS head."""
    model = small_fcos(neck="nasfpn", nasfpn_repeats=2, frozen_backbone=True).train()
    assert [s.stride for s in model.fpn.output_shape().values()] == [8, 16, 32, 64, 128]
    targets = [{"boxes": torch.tensor([[8.0, 8.0, 40.0, 60.0]]), "labels": torch.tensor([1])}]
    sum(model(torch.randn(1, 3, 256, 256), [(256, 256)], targets).values()).backward()  # p7 2x2 for GN
    assert all(p.grad is None for p in model.backbone.parameters())
    assert all(p.grad is not None for p in model.fpn.parameters())
    with pytest.raises(ValueError, match="convolutions only"):
        small_fcos(neck="nasfpn", neck_conv="adder")


@pytest.mark.parametrize("conv", ["conv", "adder"])
def test_rpafpn_levels_and_shortcuts(conv):
    shapes = {"res3": ShapeSpec(channels=8, stride=8), "res4": ShapeSpec(channels=16, stride=16),
              "res5": ShapeSpec(channels=32, stride=32)}
    neck = RPAFPN(input_shapes=shapes, in_features=["res3", "res4", "res5"], out_channels=16, norm="BN", conv=conv)
    outputs = neck({"res3": torch.randn(2, 8, 16, 20), "res4": torch.randn(2, 16, 8, 10),
                    "res5": torch.randn(2, 32, 4, 5)})
    assert [(k, tuple(v.shape[-2:])) for k, v in outputs.items()] == [
        ("p3", (16, 20)), ("p4", (8, 10)), ("p5", (4, 5)), ("p6", (2, 3)), ("p7", (1, 2))]
    assert {k: s.stride for k, s in neck.output_shape().items()} == {"p3": 8, "p4": 16, "p5": 32, "p6": 64, "p7": 128}
    with torch.no_grad():  # with every 3x3 layer's norm at zero, each level is its shortcut alone
        for module in neck.modules():
            if isinstance(module, torch.nn.BatchNorm2d) and module.num_features == 16:
                module.weight.zero_()
                module.bias.zero_()
    neck.eval()
    features = {"res3": torch.randn(1, 8, 8, 8), "res4": torch.randn(1, 16, 4, 4), "res5": torch.randn(1, 32, 2, 2)}
    outputs = neck(features)
    assert math.isclose(outputs["p6"].abs().sum().item(),
                        torch.nn.functional.max_pool2d(outputs["p5"], 2, 2, ceil_mode=True).abs().sum().item(),
                        rel_tol=1e-5)


def test_adder_fcos_trains_through_the_detection_task(tmp_path):
    """Adder FCOS on the tiny shapes set through the task, trainer and COCO evaluation (no masks)."""
    from vislab.config import load_config
    from vislab.engine.run import train

    overrides = ["task=detection", "model.name=adder_fcos_r18_rpafpn_small",
                 "model.backbone_options={width: 0.25, conv: adder_sign}", "model.fpn_channels=32",
                 "data.name=shapes", f"data.root={tmp_path / 'shapes'}", "data.synthetic_train=4",
                 "data.synthetic_val=2", "data.min_sizes=[96]", "data.max_size=128", "data.test_min_size=96",
                 "data.batch_size=2", "data.num_workers=0", "optim.name=adamw", "optim.lr=0.001", "train.steps=2",
                 "train.epochs=1", "train.log_every=1", "schedule.name=constant", f"output_dir={tmp_path / 'run'}"]
    summary = train(load_config(None, overrides))
    assert 0.0 <= summary["final"]["val/bbox/AP"] <= 1.0
    assert not any(key.startswith("val/segm") for key in summary["final"])


def test_adder_crop_classifier_recipe_initialises_the_adder_fcos_trunk(tmp_path):
    """configs/pretrain/shapes_objects_adder_r18.yaml trains the very trunk of
    configs/detection/shapes_adder_fcos_r18.yaml: every trunk tensor loads, centred adder layers
    included (the paper starts Adder FCOS from an ImageNet-trained adder ResNet)."""
    from pathlib import Path

    from vislab.config import load_config, model_kwargs
    from vislab.models import create_model
    from vislab.weights import load_backbone_weights, save_weights

    configs = Path(__file__).resolve().parents[1] / "configs"
    crops = load_config(configs / "pretrain" / "shapes_objects_adder_r18.yaml", [])
    classifier = create_model(crops.model.name, num_classes=5, **model_kwargs(crops))
    save_weights(classifier.state_dict(), tmp_path / "trunk.safetensors")
    detection = load_config(configs / "detection" / "shapes_adder_fcos_r18.yaml", [])
    detector = create_model(detection.model.name, num_classes=5, **model_kwargs(detection))
    report = load_backbone_weights(detector, tmp_path / "trunk.safetensors")
    assert report.ok and not report.missing
    loaded = detector.backbone.state_dict()
    trunk = {k.removeprefix("backbone."): v for k, v in classifier.state_dict().items() if k.startswith("backbone.")}
    shared = [k for k in loaded if k in trunk]
    assert len(shared) > 50 and all(torch.equal(loaded[k], trunk[k]) for k in shared)
    adders = [m for m in detector.backbone.modules() if type(m).__name__ == "AdderConv2d"]
    assert adders and all(m.center for m in adders)
