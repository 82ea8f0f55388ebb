"""AVA action detectors: the actor RoI head, the dilated res5, the registry entries, Kinetics
initialisation and equivalence with pytorchvideo's hub detectors (random weights)."""
from __future__ import annotations

import math

import pytest
import torch
from pytorchvideo.models import hub
from torch import nn

import vislab
from vislab.convert import convert_state_dict
from vislab.models.backbones.resnet3d import ResNet3d
from vislab.models.backbones.slowfast import SlowFast, slow_pathway_frames
from vislab.models.backbones.x3d import X3D
from vislab.models.complexity import count_params, on_meta
from vislab.models.detection.actor_head import ActorRoIHead
from vislab.models.info import model_info
from vislab.models.registry import get_entry, list_models
from vislab.weights import load_backbone_weights, save_weights

SMALL = "ava_slowfast_small"


def randomised(build) -> nn.Module:
    """A model with random weights at a scale that keeps activations O(1) through a deep trunk
    (He-scaled convs and linears; norms' affine and running statistics random too), in eval mode."""
    model = on_meta(build).to_empty(device="cpu")
    torch.manual_seed(0)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.Conv3d, nn.Linear)):
                fan_in = module.weight[0].numel()
                module.weight.normal_(0, math.sqrt(1.0 / fan_in))
                if module.bias is not None:
                    module.bias.uniform_(-0.1, 0.1)
            elif isinstance(module, nn.BatchNorm3d):
                module.weight.uniform_(0.5, 1.0)
                module.bias.uniform_(-0.1, 0.1)
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
                module.num_batches_tracked.zero_()
    return model.eval()


def boxes(*rows) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32)


def small_detector(**overrides) -> nn.Module:
    torch.manual_seed(0)
    return vislab.create_model(SMALL, num_classes=6, **overrides)


# ---------------------------------------------------------------------------------------------
# pytorchvideo equivalence
# ---------------------------------------------------------------------------------------------

BOXES_64 = boxes([0, 4.0, 6.0, 40.0, 60.0], [0, 20.5, 18.0, 33.0, 31.0], [0, 0.0, 0.0, 64.0, 64.0])


@pytest.mark.parametrize("name, build, frames", [
    ("ava_slowfast_r50_8x8", hub.slowfast_r50_detection, 32),  # the head pools 8 Slow and 32 Fast frames
    ("ava_slow_r50_4x16", hub.slow_r50_detection, 4),
])
def test_pytorchvideo_detector_converts_to_the_same_probabilities(name, build, frames):
    reference = randomised(build)
    assert count_params(reference) == get_entry(name).reference.params
    converted, model = convert_state_dict(source="pytorchvideo", model_name=name,
                                          state_dict=reference.state_dict())
    assert model.num_classes == 80 and all(not roi.aligned for roi in model.head.rois)  # torchvision's default
    torch.manual_seed(1)
    clip = torch.randn(1, 3, frames, 64, 64)
    reference_input = [slow_pathway_frames(clip, alpha=4), clip] if "slowfast" in name else clip
    with torch.no_grad():
        expected = reference(reference_input, BOXES_64)
        got = model.eval()(clip, BOXES_64)
    assert got.shape == (3, 80)
    assert 0.05 < expected.std() and (expected > 0.02).all() and (expected < 0.98).all()  # not saturated
    assert (got - expected).abs().max() <= 1e-5


# ---------------------------------------------------------------------------------------------
# the head and the detector's forward contract
# ---------------------------------------------------------------------------------------------

def test_each_box_reads_its_own_clip():
    model = small_detector().eval()
    torch.manual_seed(2)
    clips = torch.randn(3, 3, 16, 64, 64)
    rows = boxes([0, 2, 2, 30, 60], [1, 10, 4, 50, 40], [2, 0, 0, 64, 64], [1, 0, 8, 20, 64])
    with torch.no_grad():
        scores = model(clips, rows)
        alone = model(clips[1:2], boxes([0, 10, 4, 50, 40], [0, 0, 8, 20, 64]))
        empty = model(clips, torch.zeros(0, 5))
    assert scores.shape == (4, 6) and empty.shape == (0, 6)
    assert torch.allclose(scores[[1, 3]], alone, atol=1e-6)
    assert not torch.allclose(scores[1], scores[3])
    assert ((scores > 0) & (scores < 1)).all()


def test_train_mode_gives_logits_and_eval_mode_their_sigmoid():
    head = ActorRoIHead(in_channels=(8, 4), strides=(16, 16), num_classes=5, dropout=0.0)
    torch.manual_seed(3)
    features = [torch.randn(2, 8, 2, 4, 4), torch.randn(2, 4, 8, 4, 4)]
    rows = boxes([0, 0, 0, 64, 64], [1, 8, 8, 40, 56])
    logits = head.train()(features, rows)
    probabilities = head.eval()(features, rows)
    assert torch.allclose(probabilities, torch.sigmoid(logits))
    assert (logits < 0).any() or (logits > 1).any()


def test_head_averages_time_then_max_pools_the_roi_grid():
    head = ActorRoIHead(in_channels=(3,), strides=(16,), num_classes=2, dropout=0.0).eval()
    feature = torch.randn(1, 3, 4, 5, 5)
    whole = boxes([0, 0, 0, 80, 80])
    pooled = torch.ops.torchvision.roi_align(feature.mean(2), whole, 1 / 16, 7, 7, 0, True).amax(dim=(2, 3))
    with torch.no_grad():
        assert torch.allclose(head([feature], whole), torch.sigmoid(head.proj(pooled)), atol=1e-6)


def test_boxes_must_be_rows_of_five():
    with pytest.raises(ValueError, match=r"\(K, 5\)"):
        small_detector()(torch.zeros(1, 3, 16, 64, 64), torch.zeros(2, 4))


# ---------------------------------------------------------------------------------------------
# the dilated res5
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("build, names", [
    (lambda **kw: ResNet3d(depths=(1, 1, 1, 1), width=0.25, **kw), ("res5",)),
    (lambda **kw: SlowFast(depths=(1, 1, 1, 1), alpha=4, width=0.25, **kw), ("slow_res5", "fast_res5")),
    (lambda **kw: X3D(depth_factor=1.0, head_width=0, **kw), ("res5", "conv5")),
])
def test_dilated_res5_is_at_stride_16_with_the_same_weights(build, names):
    plain, dilated = build(), build(res5_dilation=2)
    assert count_params(plain) == count_params(dilated)
    assert {k: v.shape for k, v in plain.state_dict().items()} == {k: v.shape for k, v in dilated.state_dict().items()}
    with torch.no_grad():
        maps = dilated.eval().forward_features(torch.randn(1, 3, 8, 64, 64))
    for name in names:
        assert plain.output_shape()[name].stride == 32 and dilated.output_shape()[name].stride == 16
        assert maps[name].shape[-2:] == (4, 4)
    conv = [m for n, m in dilated.named_modules() if "res5" in n and n.endswith("conv2")][0]
    assert conv.stride[1:] == (1, 1) and conv.dilation == (1, 2, 2) and conv.padding[1:] == (2, 2)
    with pytest.raises(ValueError, match="res5_dilation"):
        build(res5_dilation=3)


# ---------------------------------------------------------------------------------------------
# registry
# ---------------------------------------------------------------------------------------------

def test_registry_entries_and_figures():
    assert set(list_models(task="action_detection")) == {
        "ava_slow_r50_4x16", "ava_slowfast_r50_8x8", "ava_slowfast_r101_8x8", "ava_slowfast_small",
        "ava_mvitv2_s_16x4", "ava_mvitv2_b_32x3", "ava_x3d_m"}
    expected_map = {"ava_slowfast_r101_8x8": 29.1, "ava_slow_r50_4x16": 19.5, "ava_mvitv2_s_16x4": 26.8,
                    "ava_mvitv2_b_32x3": 28.1}
    for name in list_models(task="action_detection"):
        entry = get_entry(name)
        model = on_meta(lambda: vislab.create_model(name))
        assert entry.num_classes == 80 == model.num_classes and model.head.dropout.p == 0.5
        assert all(roi.aligned for roi in model.head.rois)  # PySlowFast DETECTION.ALIGNED
        assert (entry.reference and entry.reference.ava_map) == expected_map.get(name)
        if entry.reference and entry.reference.params is not None:
            assert count_params(model) == entry.reference.params
    shapes = on_meta(lambda: vislab.create_model("ava_x3d_m")).backbone.output_shape()
    assert (shapes["conv5"].channels, shapes["conv5"].stride) == (432, 16)


def test_flops_count_a_clip_and_a_whole_frame_box():
    info = model_info(SMALL)
    assert info["task"] == "action_detection" and info["gmacs"] > 0.3 and info["input"] == [3, 16, 64, 64]
    assert model_info("ava_slowfast_r101_8x8")["reference"]["ava_map"] == 29.1


# ---------------------------------------------------------------------------------------------
# Kinetics initialisation (the task's pretrained=)
# ---------------------------------------------------------------------------------------------

TINY_MVIT = dict(depths=(1, 1, 1, 1), embed_dim=8, num_frames=4, img_size=64)


@pytest.mark.parametrize("classifier, detector, overrides", [
    ("slowfast_small", SMALL, {}),
    ("x3d_m", "ava_x3d_m", dict(depth_factor=1.0)),
    ("mvitv2_s_16x4", "ava_mvitv2_s_16x4", TINY_MVIT),
])
def test_kinetics_classifier_initialises_the_detector_trunk(tmp_path, classifier, detector, overrides):
    torch.manual_seed(4)
    source = vislab.create_model(classifier, num_classes=7, **overrides)
    path = tmp_path / "kinetics.safetensors"
    save_weights(source.state_dict(), path)
    model = vislab.create_model(detector, num_classes=3, **overrides)
    load_backbone_weights(model, path)
    trunk, kinetics = model.backbone.state_dict(), source.backbone.state_dict()
    assert trunk and all(torch.equal(tensor, kinetics[key]) for key, tensor in trunk.items())


def test_mvit_detector_reads_the_normed_last_stage():
    torch.manual_seed(5)
    model = vislab.create_model("ava_mvitv2_s_16x4", num_classes=4, dropout=0.0, **TINY_MVIT).eval()
    clips = torch.randn(2, 3, 4, 64, 64)
    rows = boxes([0, 0, 0, 64, 64], [1, 16, 8, 48, 60])
    with torch.no_grad():
        _, tokens, thw = model.backbone._stage_tokens(clips)[-1]
        normed = model.backbone.norm(tokens[:, 1:]).transpose(1, 2).reshape(2, -1, *thw)
        assert torch.allclose(model(clips, rows), model.head([normed], rows), atol=1e-6)
    assert model.head.rois[0].spatial_scale == 1 / 32
