"""Unit tests for the ResNet/ResNeXt models in vislab/models."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import vislab
from vislab.layers import FrozenBatchNorm2d, LayerNorm2d
from vislab.models.backbones.resnet import BasicBlock, Bottleneck
from vislab.models.complexity import count_params, on_meta


STAGES = ("res2", "res3", "res4", "res5")


def tiny(name: str = "resnet18", **overrides) -> nn.Module:
    torch.manual_seed(0)
    overrides.setdefault("width", 0.25)
    return vislab.create_model(name, num_classes=10, **overrides)


# ---------------------------------------------------------------------------------------------
# Registry figures
# ---------------------------------------------------------------------------------------------


def test_list_models_classification_contains_all():
    models = vislab.list_models(task="classification")
    assert {"resnet18", "resnet152", "resnext50_32x4d", "resnext101_64x4d"} <= set(models)
    assert models == sorted(models)
    assert set(models) <= set(vislab.list_models())


def test_list_models_unknown_task_is_empty():
    assert vislab.list_models(task="no-such-task") == []


def test_meta_build_has_meta_params():
    model = on_meta(lambda: vislab.create_model("resnet50"))
    assert all(p.device.type == "meta" for p in model.parameters())
    assert count_params(model) == 25_557_032


def test_params_change_with_num_classes():
    base = count_params(on_meta(lambda: vislab.create_model("resnet50")))
    ten = count_params(on_meta(lambda: vislab.create_model("resnet50", num_classes=10)))
    # the head is Linear(2048, classes): 2048 weights + 1 bias per class
    assert base - ten == (1000 - 10) * (2048 + 1)


# ---------------------------------------------------------------------------------------------
# Features and shapes
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, overrides", [
    ("resnet18", {}),
    ("resnet50", {"depths": (1, 1, 1, 1)}),
    ("resnext50_32x4d", {"depths": (1, 1, 1, 1), "width": 0.5}),
])
@pytest.mark.parametrize("small_stem, strides", [(False, (4, 8, 16, 32)), (True, (1, 2, 4, 8))])
def test_forward_features_match_output_shape(name, overrides, small_stem, strides):
    model = tiny(name, small_stem=small_stem, **overrides).eval()
    shapes = model.backbone.output_shape()
    assert list(shapes) == list(STAGES)
    assert tuple(shapes[s].stride for s in STAGES) == strides
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        features = model.forward_features(x)
        logits = model(x)
    assert list(features) == list(STAGES)
    for stage, stride in zip(STAGES, strides):
        assert features[stage].shape == (2, shapes[stage].channels, 32 // stride, 32 // stride), stage
    assert logits.shape == (2, 10)
    assert model.head.fc.in_features == shapes["res5"].channels


def test_output_channels_basic_and_bottleneck():
    basic = tiny("resnet18", width=1.0).backbone.output_shape()
    assert [basic[s].channels for s in STAGES] == [64, 128, 256, 512]
    bottleneck = on_meta(lambda: vislab.create_model("resnet50")).backbone.output_shape()
    assert [bottleneck[s].channels for s in STAGES] == [256, 512, 1024, 2048]


@pytest.mark.parametrize("width, expected", [(0.25, [16, 32, 64, 128]), (0.5, [32, 64, 128, 256]),
                                             (2.0, [128, 256, 512, 1024])])
def test_width_multiplier_scales_channels(width, expected):
    model = on_meta(lambda: vislab.create_model("resnet18", width=width))
    shapes = model.backbone.output_shape()
    assert [shapes[s].channels for s in STAGES] == expected
    assert model.backbone.stem.conv.out_channels == expected[0]
    assert model.head.fc.in_features == expected[-1]


def test_width_multiplier_scales_bottleneck_inner_width():
    model = on_meta(lambda: vislab.create_model("resnet50", width=0.5))
    block = model.backbone.res2[0]
    assert block.conv1.out_channels == 32
    assert block.conv3.out_channels == 128


def test_resnext_uses_grouped_conv():
    model = on_meta(lambda: vislab.create_model("resnext50_32x4d"))
    block = model.backbone.res2[0]
    assert block.conv2.groups == 32
    assert block.conv2.in_channels == 128  # 32 groups x 4 channels


# ---------------------------------------------------------------------------------------------
# Norm options
# ---------------------------------------------------------------------------------------------

NORM_CASES = [
    ("BN", {}, nn.BatchNorm2d),
    ("GN", {"norm_groups": 8}, nn.GroupNorm),
    ("FrozenBN", {}, FrozenBatchNorm2d),
    ("LN", {}, LayerNorm2d),
    ("none", {}, None),
]


@pytest.mark.parametrize("norm, extra, norm_type", NORM_CASES, ids=[c[0] for c in NORM_CASES])
def test_every_norm_builds_and_trains(norm, extra, norm_type):
    model = tiny("resnet18", norm=norm, small_stem=True, **extra).train()
    norms = [m for m in model.modules() if isinstance(m, (nn.BatchNorm2d, nn.GroupNorm, nn.LayerNorm,
                                                          FrozenBatchNorm2d, nn.SyncBatchNorm))]
    if norm_type is None:
        assert norms == []
    else:
        assert norms and all(type(m) is norm_type for m in norms)
    x = torch.randn(2, 3, 32, 32)
    logits = model(x)
    assert logits.shape == (2, 10)
    loss = nn.functional.cross_entropy(logits, torch.tensor([1, 2]))
    loss.backward()
    params = list(model.named_parameters())
    assert params
    for name, p in params:
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
    assert any(p.grad.abs().sum() > 0 for _, p in params)


def test_gn_with_bottleneck_and_groups_fitting_width():
    model = tiny("resnet50", norm="GN", norm_groups=4, depths=(1, 1, 1, 1))
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    assert all(m.num_groups == 4 for m in model.modules() if isinstance(m, nn.GroupNorm))


def test_gn_groups_not_fitting_width_raises():
    with pytest.raises(ValueError, match="16"):
        tiny("resnet18", norm="GN")  # 16 stem channels, 32 groups


def test_sync_bn_forward_single_process():
    model = tiny("resnet18", norm="SyncBN", small_stem=True).train()
    assert any(isinstance(m, nn.SyncBatchNorm) for m in model.modules())
    assert not any(type(m) is nn.BatchNorm2d for m in model.modules())
    out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 10)
    out.sum().backward()
    assert model.backbone.stem.conv.weight.grad is not None


def test_norm_init_ones_and_zeros():
    model = tiny("resnet18", norm="BN")
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            assert torch.all(m.weight == 1) and torch.all(m.bias == 0)


# ---------------------------------------------------------------------------------------------
# Zero-init residual
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, overrides", [("resnet18", {}), ("resnet50", {"depths": (2, 1, 1, 1)})])
@pytest.mark.parametrize("norm, extra", [("BN", {}), ("GN", {"norm_groups": 4}), ("FrozenBN", {})])
def test_zero_init_residual_zeroes_every_last_norm(name, overrides, norm, extra):
    model = tiny(name, zero_init_residual=True, norm=norm, **overrides, **extra)
    blocks = [m for m in model.modules() if isinstance(m, (BasicBlock, Bottleneck))]
    assert len(blocks) == sum(overrides.get("depths", (2, 2, 2, 2)))
    for block in blocks:
        assert torch.all(block.last_norm.weight == 0)
        # the other norms of the block keep scale 1
        assert torch.all(block.norm1.weight == 1)


def test_without_zero_init_last_norm_is_one():
    model = tiny("resnet18", zero_init_residual=False)
    blocks = [m for m in model.modules() if isinstance(m, BasicBlock)]
    assert all(torch.all(b.last_norm.weight == 1) for b in blocks)


@pytest.mark.parametrize("name, overrides", [("resnet18", {}), ("resnet50", {"depths": (2, 1, 1, 1)})])
def test_zero_init_block_outputs_relu_of_shortcut(name, overrides):
    model = tiny(name, zero_init_residual=True, small_stem=True, **overrides).train()
    # an identity-shortcut block: output == relu(x)
    identity_block = model.backbone.res2[1]
    assert identity_block.downsample is None
    x = torch.randn(2, identity_block.conv1.in_channels, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(identity_block(x.clone()), torch.relu(x))
    # a projection block (stride 2): output == relu(downsample(x))
    proj_block = model.backbone.res3[0]
    assert proj_block.downsample is not None
    y = torch.randn(2, proj_block.conv1.in_channels, 8, 8)
    with torch.no_grad():
        expected = torch.relu(proj_block.downsample(y.clone()))
        torch.testing.assert_close(proj_block(y.clone()), expected)
    # sanity: without zero-init the block is not the identity
    plain = tiny(name, zero_init_residual=False, small_stem=True, **overrides).train()
    with torch.no_grad():
        assert not torch.allclose(plain.backbone.res2[1](x.clone()), torch.relu(x))


# ---------------------------------------------------------------------------------------------
# create_model errors
# ---------------------------------------------------------------------------------------------

def test_unknown_override_raises_type_error_with_closest_option():
    with pytest.raises(TypeError) as info:
        vislab.create_model("resnet18", nrom="GN")
    message = str(info.value)
    assert "nrom" in message
    assert "did you mean norm" in message


def test_unknown_override_lists_options_without_num_classes_hint():
    with pytest.raises(TypeError) as info:
        vislab.create_model("resnet18", zero_init_residuals=True)
    assert "zero_init_residual" in str(info.value)


def test_unknown_model_name_suggests_close_names():
    with pytest.raises(KeyError) as info:
        vislab.create_model("resnet19")
    message = str(info.value)
    assert "resnet19" in message
    assert "resnet18" in message


def test_unknown_model_name_in_model_info():
    with pytest.raises(KeyError, match="resnext50_32x4d"):
        vislab.model_info("resnext50_32x4")


def test_num_classes_default_and_override():
    assert on_meta(lambda: vislab.create_model("resnet18")).head.fc.out_features == 1000
    assert tiny("resnet18").head.fc.out_features == 10
