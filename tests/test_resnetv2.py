"""Tests for the BiT pre-activation ResNet v2 (vislab/models/backbones/resnetv2.py), its
weight-standardised convolution and the timm converter."""
from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import vislab
from vislab.convert import convert_file, convert_state_dict
from vislab.convert.timm_resnetv2 import timm_resnetv2
from vislab.layers import WeightStdConv2d
from vislab.models.registry import get_entry
from vislab.weights import WeightsError

timm = pytest.importorskip("timm")


STAGES = ("res2", "res3", "res4", "res5")


def tiny(**overrides) -> nn.Module:
    """A quarter-width R50 whose GroupNorms use 8 groups (the narrowest layer has 16 channels)."""
    torch.manual_seed(0)
    options = {"width_factor": 0.25, "norm_groups": 8, **overrides}
    return vislab.create_model("resnetv2_50x1_bit", num_classes=10, **options)


def randomise_(model: nn.Module, *, seed: int) -> None:
    """Every parameter and buffer to random values; norm scales around 1."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
            noise = torch.randn(tensor.shape, generator=generator) * 0.02
            is_norm_scale = tensor.ndim == 1 and name.endswith("weight")
            tensor.copy_(1 + 10 * noise if is_norm_scale else noise)


# ---------------------------------------------------------------------------------------------
# Weight standardisation
# ---------------------------------------------------------------------------------------------

def test_weight_std_conv_matches_formula_by_hand():
    torch.manual_seed(0)
    conv = WeightStdConv2d(4, 6, 3, stride=2, padding=1)
    with torch.no_grad():
        conv.weight.mul_(3.0).add_(0.5)
    x = torch.randn(2, 4, 9, 9)
    expected_weight = torch.empty_like(conv.weight)
    for o in range(6):
        values = conv.weight[o].detach().flatten().tolist()
        mean = sum(values) / len(values)
        var = sum((v - mean) ** 2 for v in values) / len(values)
        expected_weight[o] = (conv.weight[o].detach() - mean) / (var + 1e-8) ** 0.5
    assert conv.eps == 1e-8
    torch.testing.assert_close(conv.standardized_weight(), expected_weight, rtol=1e-5, atol=1e-6)
    expected = F.conv2d(x, expected_weight, stride=2, padding=1)
    torch.testing.assert_close(conv(x), expected, rtol=1e-4, atol=1e-5)
    plain = F.conv2d(x, conv.weight, stride=2, padding=1)
    assert not torch.allclose(conv(x), plain, atol=1e-2)


def test_weight_std_conv_is_invariant_to_filter_scale_and_shift_and_trains():
    torch.manual_seed(0)
    conv = WeightStdConv2d(3, 5, 1)
    x = torch.randn(1, 3, 4, 4)
    before = conv(x)
    with torch.no_grad():
        conv.weight.mul_(7.0).add_(-2.0)
    torch.testing.assert_close(conv(x), before, rtol=1e-4, atol=1e-5)
    conv(x).square().sum().backward()
    assert conv.weight.grad is not None and conv.weight.grad.abs().sum() > 0


def test_weight_std_conv_matches_timm_std_conv_of_bit():
    from timm.layers import StdConv2d

    torch.manual_seed(0)
    ours = WeightStdConv2d(8, 16, 3, padding=1)
    theirs = StdConv2d(8, 16, 3, eps=1e-8)
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(2, 8, 7, 7)
    torch.testing.assert_close(ours(x), theirs(x), rtol=0, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# Architecture
# ---------------------------------------------------------------------------------------------

def test_forward_features_match_output_shape():
    model = tiny().eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        features = model.forward_features(x)
    shapes = model.backbone.output_shape()
    assert list(features) == list(STAGES) == list(shapes)
    for name, spec in shapes.items():
        assert features[name].shape == (2, spec.channels, 64 // spec.stride, 64 // spec.stride)
    assert [s.stride for s in shapes.values()] == [4, 8, 16, 32]
    assert [s.channels for s in shapes.values()] == [64, 128, 256, 512]
    assert model.backbone.num_features == 512
    assert features["res5"].min() >= 0, "res5 is after the final norm + ReLU"


def test_width_factor_multiplies_every_width():
    model = tiny(width_factor=0.5)
    assert model.backbone.stem.conv.out_channels == 32
    assert [s.channels for s in model.backbone.output_shape().values()] == [128, 256, 512, 1024]
    assert model.backbone.res3[0].conv2.out_channels == 64
    assert get_entry("resnetv2_50x3_bit").defaults["width_factor"] == 3


def test_pooled_vector_is_mean_of_activated_res5():
    model = tiny().eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        pooled = model.backbone.forward_pooled(x)
        res5 = model.forward_features(x)["res5"]
        logits = model(x)
    torch.testing.assert_close(pooled, res5.mean(dim=(2, 3)))
    torch.testing.assert_close(logits, model.head.fc(pooled))


def test_layers_are_weight_standardised_gn_by_default_and_options_switch_them():
    model = tiny()
    convs = [m for m in model.backbone.modules() if isinstance(m, nn.Conv2d)]
    assert convs and all(isinstance(m, WeightStdConv2d) for m in convs)
    assert all(m.num_groups == 8 for m in model.backbone.modules() if isinstance(m, nn.GroupNorm))
    plain = tiny(weight_std=False, norm="BN")
    assert not any(isinstance(m, WeightStdConv2d) for m in plain.modules())
    assert any(isinstance(m, nn.BatchNorm2d) for m in plain.modules())
    plain.train()(torch.randn(2, 3, 32, 32)).sum().backward()


def test_weight_std_makes_the_model_invariant_to_conv_scale():
    x = torch.randn(1, 3, 32, 32)
    for weight_std, invariant in ((True, True), (False, False)):
        model = tiny(weight_std=weight_std).eval()
        with torch.no_grad():
            before = model(x)
            model.backbone.res3[0].conv3.weight.mul_(5.0)
            after = model(x)
        assert torch.allclose(before, after, rtol=1e-4, atol=1e-5) == invariant


def test_stem_zero_pads_before_an_unpadded_max_pool():
    stem = tiny(weight_std=False).backbone.stem
    assert isinstance(stem.pad, nn.ConstantPad2d) and stem.pad.padding == (1, 1, 1, 1)
    assert stem.pad.value == 0.0
    assert stem.pool.kernel_size == 3 and stem.pool.stride == 2 and stem.pool.padding == 0
    with torch.no_grad():
        stem.conv.weight.fill_(0.0)
        stem.conv.weight[:, 0, 3, 3] = torch.linspace(-1, 1, stem.conv.out_channels)
    x = -torch.ones(1, 3, 8, 8)
    with torch.no_grad():
        conv = stem.conv(x)
        out = stem(x)
    assert out.shape == (1, 16, 2, 2)
    # Where a filter makes the whole map negative, the zero padding wins the border windows
    # (a -inf padded pool would return the map's values there); the inner window does not see it.
    negative = conv[0, :, 0, 0] < 0
    assert negative.sum() == 8
    assert (out[0, negative, 0, 0] == 0).all()
    torch.testing.assert_close(out[0, negative, 1, 1], conv[0, negative, 1, 1])


def test_projection_shortcut_reads_the_preactivated_input():
    block = tiny().backbone.res3[0]
    x = torch.randn(1, 64, 8, 8)
    with torch.no_grad():
        block.conv3.weight.zero_()
        out = block(x)
        expected = block.projection(block.relu(block.norm1(x)))
    assert isinstance(block.projection, WeightStdConv2d) and block.projection.stride == (2, 2)
    torch.testing.assert_close(out, expected)
    assert tiny().backbone.res3[1].projection is None


def test_bad_input_names_its_shape():
    model = tiny()
    with pytest.raises(ValueError, match=r"\(2, 1, 32, 32\).*\(N, 3, H, W\)"):
        model(torch.randn(2, 1, 32, 32))
    with pytest.raises(ValueError, match=r"\(3, 32, 32\)"):
        model(torch.randn(3, 32, 32))


def test_gn_groups_not_fitting_width_raises():
    with pytest.raises(ValueError, match="16 channels"):
        tiny(norm_groups=32)


def test_zero_init_head_gives_zero_logits():
    model = tiny(zero_init_head=True).eval()
    with torch.no_grad():
        logits = model(torch.randn(2, 3, 32, 32))
    assert torch.equal(logits, torch.zeros(2, 10))
    with torch.no_grad():
        assert tiny().eval()(torch.randn(2, 3, 32, 32)).abs().max() > 0


def test_drop_path_is_active_in_train_and_identity_in_eval():
    reference = tiny().eval()
    model = tiny(drop_path_rate=0.5)
    model.load_state_dict(reference.state_dict())
    rates = [b.drop_path.drop_prob for s in STAGES for b in getattr(model.backbone, s)]
    assert rates[0] == 0.0 and rates[-1] == 0.5 and len(rates) == 16
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x), reference(x))
        model.train()
        torch.manual_seed(1)
        first = model(x)
        torch.manual_seed(2)
        second = model(x)
    assert not torch.allclose(first, second)


def test_lr_layer_ids_and_no_weight_decay():
    model = tiny()
    backbone = model.backbone
    assert backbone.num_lr_layers == 17 == model.num_lr_layers
    assert backbone.lr_layer_id("stem.conv.weight") == 0
    assert backbone.lr_layer_id("res2.0.conv1.weight") == 1
    assert backbone.lr_layer_id("res3.0.projection.weight") == 4
    assert backbone.lr_layer_id("res5.2.norm3.bias") == 16
    assert backbone.lr_layer_id("norm.weight") == 17
    assert model.lr_layer_id("head.fc.weight") == 17
    ids = [model.lr_layer_id(n) for n, _ in model.named_parameters()]
    assert ids == sorted(ids) and set(ids) == set(range(18))
    assert model.no_weight_decay() == set()


# ---------------------------------------------------------------------------------------------
# timm equivalence and conversion
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def converted_bit_r50(tmp_path_factory):
    """timm's resnetv2_50x1_bit with random weights and the vislab model loaded from them."""
    reference = timm.create_model("resnetv2_50x1_bit", pretrained=False)
    randomise_(reference, seed=0)
    reference.eval()
    folder = tmp_path_factory.mktemp("bit")
    torch.save(reference.state_dict(), folder / "timm.pth")
    convert_file(source="timm", model_name="resnetv2_50x1_bit", src=folder / "timm.pth",
                 dst=folder / "vislab.safetensors")
    model = vislab.create_model("resnetv2_50x1_bit")
    vislab.load_weights(model, folder / "vislab.safetensors")
    return reference, model.eval()


@pytest.mark.parametrize("size", [128, 224])
def test_logits_match_timm(converted_bit_r50, size):
    reference, model = converted_bit_r50
    torch.manual_seed(size)
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        expected = reference(x)
        logits = model(x)
    assert expected.abs().max() > 1e-2
    assert (logits - expected).abs().max().item() <= 1e-4


def test_features_match_timm_stages_and_final_norm(converted_bit_r50):
    reference, model = converted_bit_r50
    torch.manual_seed(0)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        stages = reference.forward_intermediates(x, indices=[1, 2, 3], intermediates_only=True)
        final = reference.forward_features(x)
        features = model.forward_features(x)
    # The residual streams grow to ~100 with random weights; fp32 rounding is relative to that.
    for name, expected in zip(STAGES, [*stages, final]):
        scale = expected.abs().max().item()
        assert (features[name] - expected).abs().max().item() <= 2e-5 * scale, name


def test_converter_reshapes_the_conv_head_to_linear():
    state = {"head.fc.weight": torch.randn(7, 2048, 1, 1), "head.fc.bias": torch.randn(7),
             "stages.3.blocks.0.downsample.conv.weight": torch.randn(1),
             "norm.weight": torch.randn(1), "stem.conv.weight": torch.randn(1)}
    converted = timm_resnetv2(state)
    assert converted["head.fc.weight"].shape == (7, 2048)
    assert sorted(converted) == ["backbone.norm.weight", "backbone.res5.0.projection.weight",
                                 "backbone.stem.conv.weight", "head.fc.bias", "head.fc.weight"]


def test_other_variant_weights_raise_listing_keys():
    with torch.device("meta"):
        other = timm.create_model("resnetv2_101x1_bit", pretrained=False)
    state = {k: torch.zeros(v.shape) for k, v in other.state_dict().items()}
    with pytest.raises(WeightsError, match=r"153 unexpected: backbone\.res4\.10\.conv1\.weight"):
        convert_state_dict(source="timm", model_name="resnetv2_50x1_bit", state_dict=state)
