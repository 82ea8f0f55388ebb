"""Cascade R-CNN's heads (vislab/models/detection/cascade.py) and NAS-FPN
(vislab/models/necks/nasfpn.py) on hand-made cases."""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from vislab.models.detection.box_coder import BoxCoder
from vislab.models.detection.cascade import CascadeROIHeads, _ScaleGradient
from vislab.models.detection.heads import BoxHead
from vislab.models.necks.nasfpn import CELLS, NASFPN
from vislab.models.shape_spec import ShapeSpec

NUM_CLASSES = 2


def cascade(**options) -> CascadeROIHeads:
    torch.manual_seed(0)
    heads = [BoxHead(channels=4, resolution=7, kind="2fc", fc_dim=8) for _ in range(3)]
    return CascadeROIHeads(box_heads=heads, num_classes=NUM_CLASSES, strides=[4], **options)


def test_gradient_scale_is_identity_forward_and_scales_backward():
    x = torch.randn(3, 4, requires_grad=True)
    y = _ScaleGradient.apply(x, 1 / 3)
    torch.testing.assert_close(y, x)
    y.sum().backward()
    torch.testing.assert_close(x.grad, torch.full_like(x, 1 / 3))


def test_stages_relabel_at_rising_iou_with_their_box_coder():
    heads = cascade()
    target = {"boxes": torch.tensor([[0.0, 0.0, 10.0, 10.0]]), "labels": torch.tensor([1])}
    # IoU with the ground truth: 1.0, 0.81, 0.64, 0.49
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 9.0, 9.0], [0.0, 0.0, 8.0, 8.0], [0.0, 0.0, 7.0, 7.0]])
    classes = [heads._label(boxes, target, matcher=heads.matchers[s], box_coder=heads.box_coders[s])["classes"]
               for s in range(3)]
    assert [c.tolist() for c in classes] == [[1, 1, 1, 2], [1, 1, 1, 2], [1, 1, 2, 2]]
    deltas = [heads._label(boxes, target, matcher=heads.matchers[s], box_coder=heads.box_coders[s])["deltas"]
              for s in range(3)]
    torch.testing.assert_close(deltas[1], 2 * deltas[0])  # (20, 20, 10, 10) = 2 x (10, 10, 5, 5)
    torch.testing.assert_close(deltas[2], 3 * deltas[0])
    assert [m.low for m in heads.matchers] == [0.5, 0.6, 0.7]
    assert [cascade(stage_ious=(0.5, 0.7, 0.8)).matchers[s].low for s in range(3)] == [0.5, 0.7, 0.8]


def _fixed_predictors(heads: CascadeROIHeads, *, logits: list[list[float]], shifts: list[float]) -> None:
    """Each stage predicts the same class logits and shifts every box right by ``shift`` pixels
    (for a 10-pixel-wide box: dx = shift / 10, times the stage's x weight)."""
    with torch.no_grad():
        for stage, predictor in enumerate(heads.box_predictors):
            predictor.cls_score.weight.zero_()
            predictor.cls_score.bias.copy_(torch.tensor(logits[stage]))
            predictor.bbox_pred.weight.zero_()
            wx = heads.box_coders[stage].weights[0]
            predictor.bbox_pred.bias.copy_(torch.tensor([wx * shifts[stage] / 10, 0.0, 0.0, 0.0]))


def test_inference_averages_stage_probabilities_and_keeps_the_last_stages_boxes():
    heads = cascade(score_threshold=0.0).eval()
    logits = [[2.0, 0.0, 0.0], [0.0, 2.0, 0.0], [1.0, 1.0, 0.0]]
    _fixed_predictors(heads, logits=logits, shifts=[1.0, 2.0, 3.0])
    features = [torch.randn(1, 4, 16, 16)]
    proposal = torch.tensor([[10.0, 10.0, 20.0, 20.0]])
    detections = heads(features, [proposal], [(64, 64)])[0]
    expected = torch.stack([F.softmax(torch.tensor(row), dim=0) for row in logits]).mean(dim=0)
    order = expected[:NUM_CLASSES].argsort(descending=True)
    torch.testing.assert_close(detections["scores"], expected[order])
    assert detections["labels"].tolist() == order.tolist()
    # proposals move by 1 (stage 0) and 2 (stage 1) before the last stage regresses them by 3 more
    torch.testing.assert_close(detections["boxes"], torch.tensor([[16.0, 10.0, 26.0, 20.0]] * NUM_CLASSES))


def test_training_gives_per_stage_losses_and_scaled_feature_gradients():
    heads = cascade().train()
    features = [torch.randn(1, 4, 16, 16, requires_grad=True)]
    target = {"boxes": torch.tensor([[8.0, 8.0, 40.0, 40.0]]), "labels": torch.tensor([0]),
              "masks": torch.zeros(1, 64, 64)}
    proposals = [torch.tensor([[8.0, 8.0, 38.0, 40.0], [0.0, 0.0, 20.0, 20.0], [30.0, 30.0, 60.0, 60.0]])]
    losses = heads(features, proposals, [(64, 64)], [target])
    assert set(losses) == {f"{k}_stage{s}" for s in range(3) for k in ("loss_cls", "loss_box_reg")}
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert features[0].grad is not None and features[0].grad.abs().sum() > 0


def test_nasfpn_gives_p3_to_p7_with_repeats_of_seven_cells():
    shapes = {"res3": ShapeSpec(channels=8, stride=8), "res4": ShapeSpec(channels=16, stride=16),
              "res5": ShapeSpec(channels=32, stride=32)}
    neck = NASFPN(input_shapes=shapes, in_features=["res3", "res4", "res5"], channels=16, num_repeats=2, norm="BN")
    assert len(neck.repeats) == 2 and all(len(cells) == len(CELLS) == 7 for cells in neck.repeats)
    assert isinstance(neck.inputs[1], nn.Identity)  # res4 is already 16 wide
    features = {"res3": torch.randn(2, 8, 16, 16), "res4": torch.randn(2, 16, 8, 8), "res5": torch.randn(2, 32, 4, 4)}
    outputs = neck(features)
    assert [(k, tuple(v.shape)) for k, v in outputs.items()] == [
        ("p3", (2, 16, 16, 16)), ("p4", (2, 16, 8, 8)), ("p5", (2, 16, 4, 4)), ("p6", (2, 16, 2, 2)),
        ("p7", (2, 16, 1, 1))]
    assert {k: s.stride for k, s in neck.output_shape().items()} == {"p3": 8, "p4": 16, "p5": 32, "p6": 64, "p7": 128}


def test_nasfpn_cells_merge_as_the_searched_architecture():
    """With every cell's ReLU-conv-norm replaced by the identity, one repeat computes the
    Model Garden's merging rules by hand: attention gates the finer input by the coarser one's
    global max, and output cells add their level's unread inputs."""
    sizes = {3: (16, 16), 4: (8, 8), 5: (4, 4), 6: (2, 2), 7: (1, 1)}
    p3, p4, p5, p6, p7 = (torch.randn(1, 2, *sizes[level]) for level in range(3, 8))
    cells = nn.ModuleList(nn.Identity() for _ in CELLS)

    def att(coarse, fine):
        return coarse + fine * torch.sigmoid(coarse.amax(dim=(2, 3), keepdim=True))

    def up(x, level):
        return F.interpolate(x, size=sizes[level], mode="nearest")

    def pool(x, factor):
        return F.max_pool2d(x, factor, factor)

    n5 = att(up(p6, 4), p4)
    n6 = p4 + n5
    n7 = p3 + up(n6, 3)
    n8 = n6 + pool(n7, 2)
    n9 = att(pool(n8, 2), pool(n7, 4)) + p5
    n10 = att(pool(n9, 4), pool(n6, 8)) + p7
    n11 = att(up(n10, 6), pool(n9, 2))
    outputs = NASFPN._run_cells(cells, [p3, p4, p5, p6, p7], sizes)
    for got, expected in zip(outputs, (n7, n8, n9, n11, n10)):
        torch.testing.assert_close(got, expected)


def test_box_coder_weights_scale_the_deltas():
    boxes, reference = torch.tensor([[1.0, 2.0, 12.0, 14.0]]), torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    coarse, fine = BoxCoder(weights=(10, 10, 5, 5)), BoxCoder(weights=(30, 30, 15, 15))
    torch.testing.assert_close(fine.encode(boxes, reference), 3 * coarse.encode(boxes, reference))
    torch.testing.assert_close(fine.decode(fine.encode(boxes, reference), reference), boxes)
