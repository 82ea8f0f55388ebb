"""Unit tests for ConvNeXt: registry figures, features, timm equivalence, options, lr layer ids."""
from __future__ import annotations

import re

import pytest
import timm
import torch

import vislab
from helpers import assert_timm_conversion_matches
from vislab.convert import convert_state_dict
from vislab.engine.optim import param_groups
from vislab.models.backbones.convnext import ConvNeXtBlock
from vislab.models.complexity import count_params, on_meta
from vislab.weights import WeightsError


STAGES = ("stage1", "stage2", "stage3", "stage4")
SMALL = {"depths": (1, 2, 3, 1), "dims": (8, 16, 32, 64)}


def small_model(**overrides):
    torch.manual_seed(0)
    return vislab.create_model("convnext_tiny", num_classes=10, **{**SMALL, **overrides})


def randomize_(module: torch.nn.Module, *, seed: int) -> None:
    """Every parameter and buffer to random values: norm scales near 1, layer-scale gammas of
    order 1 (they are 1e-6 at init, which would hide every block), the rest of order 0.02."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in module.state_dict().items():
            noise = torch.randn(tensor.shape, generator=generator)
            if name.endswith("gamma"):
                tensor.copy_(0.5 * noise)
            elif re.search(r"norm\.weight$|stem\.1\.weight$|downsample\.0\.weight$", name):
                tensor.copy_(1 + 0.1 * noise)
            else:
                tensor.copy_(0.02 * noise)


# ---------------------------------------------------------------------------------------------
# Features, shapes and input sizes
# ---------------------------------------------------------------------------------------------

def test_forward_features_match_output_shape():
    model = small_model().eval()
    shapes = model.backbone.output_shape()
    assert list(shapes) == list(STAGES)
    assert [shapes[s].stride for s in STAGES] == [4, 8, 16, 32]
    assert [shapes[s].channels for s in STAGES] == list(SMALL["dims"])
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        features = model.forward_features(x)
        logits = model(x)
    assert list(features) == list(STAGES)
    for stage in STAGES:
        spec = shapes[stage]
        assert features[stage].shape == (2, spec.channels, 64 // spec.stride, 96 // spec.stride), stage
    assert logits.shape == (2, 10)
    assert model.backbone.num_features == model.head.fc.in_features == 64


@pytest.mark.parametrize("height, width", [(225, 224), (224, 200), (48, 64)])
def test_input_not_multiple_of_32_names_sizes(height, width):
    model = small_model()
    with pytest.raises(ValueError) as info:
        model(torch.randn(1, 3, height, width))
    assert f"{height}x{width}" in str(info.value)
    assert "32" in str(info.value)


# ---------------------------------------------------------------------------------------------
# timm equivalence and weight conversion
# ---------------------------------------------------------------------------------------------

def test_timm_convnext_tiny_converts_to_same_logits(tmp_path):
    reference = timm.create_model("convnext_tiny", pretrained=False).eval()
    randomize_(reference, seed=1)
    gammas = [p for n, p in reference.named_parameters() if n.endswith("gamma")]
    assert len(gammas) == 18 and all(g.abs().mean() > 0.1 for g in gammas)
    assert_timm_conversion_matches(reference, model=vislab.create_model("convnext_tiny"), model_name="convnext_tiny",
                                   folder=tmp_path, image_size=128)


def test_timm_weights_of_another_variant_are_refused_with_keys():
    base = on_meta(lambda: timm.create_model("convnext_base", pretrained=False))
    state_dict = {k: torch.empty(v.shape) for k, v in base.state_dict().items()}
    with pytest.raises(WeightsError) as info:
        convert_state_dict(source="timm", model_name="convnext_tiny", state_dict=state_dict)
    message = str(info.value)
    assert "162 unexpected" in message  # stage 3 blocks 9..26: 18 blocks of 9 tensors each
    assert "backbone.stage3.blocks.10.dwconv.weight" in message
    assert "181 mis-shaped" in message  # every tiny tensor (wider in base) but the classifier's bias
    assert "backbone.pooled_norm.weight (file (1024,) vs model (768,))" in message
    assert "missing" not in message


# ---------------------------------------------------------------------------------------------
# Options: drop path, layer scale, head init, kernel and MLP widths
# ---------------------------------------------------------------------------------------------

def test_drop_path_rates_rise_linearly_over_all_blocks():
    model = small_model(drop_path_rate=0.3)
    rates = [m.drop_path.drop_prob for m in model.modules() if isinstance(m, ConvNeXtBlock)]
    assert rates == pytest.approx([0.3 * i / 6 for i in range(7)])


def test_drop_path_active_in_train_and_identity_in_eval():
    # layer scale 1.0 so that every residual branch (and so dropping it) changes the output
    model = small_model(drop_path_rate=0.5, layer_scale_init=1.0)
    x = torch.randn(4, 3, 32, 32)
    model.train()
    torch.manual_seed(3)
    first = model(x)
    torch.manual_seed(4)
    second = model(x)
    assert (first - second).abs().max() > 1e-2
    model.eval()
    with torch.no_grad():
        evaluated = model(x)
        plain = small_model(drop_path_rate=0.0, layer_scale_init=1.0).eval()
        plain.load_state_dict(model.state_dict())
        torch.testing.assert_close(evaluated, plain(x))
        torch.testing.assert_close(model(x), evaluated)


def test_layer_scale_init_sets_gammas_and_none_removes_them():
    scaled = small_model()
    gammas = [m.gamma for m in scaled.modules() if isinstance(m, ConvNeXtBlock)]
    assert all(torch.all(g == 1e-6) for g in gammas)
    plain = small_model(layer_scale_init=None)
    assert all(m.gamma is None for m in plain.modules() if isinstance(m, ConvNeXtBlock))
    gamma_count = sum(depth * dim for depth, dim in zip(SMALL["depths"], SMALL["dims"]))
    assert count_params(scaled) - count_params(plain) == gamma_count
    # with gamma 1e-6 a block starts as the identity; without layer scale it does not
    x = torch.randn(2, 8, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(scaled.backbone.stage1.blocks[0](x), x, atol=1e-5, rtol=0)
        assert (plain.backbone.stage1.blocks[0](x) - x).abs().max() > 1e-2


def test_head_init_scale_scales_classifier_weights():
    default = vislab.create_model("convnext_tiny", num_classes=100, **SMALL).head.fc
    scaled = vislab.create_model("convnext_tiny", num_classes=100, head_init_scale=1e-3, **SMALL).head.fc
    assert default.weight.std().item() == pytest.approx(0.02, rel=0.1)
    assert scaled.weight.std().item() == pytest.approx(2e-5, rel=0.1)
    assert torch.all(default.bias == 0) and torch.all(scaled.bias == 0)


def test_conv_and_linear_init_std_002_and_zero_bias():
    model = small_model(dims=(32, 64, 128, 256))
    fc1 = model.backbone.stage4.blocks[0].mlp.fc1
    assert fc1.weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert torch.all(fc1.bias == 0) and torch.all(model.backbone.stem.conv.bias == 0)
    assert torch.all(model.backbone.pooled_norm.weight == 1)


def test_kernel_size_and_mlp_ratio_options():
    model = small_model(kernel_size=3, mlp_ratio=2.0)
    block = model.backbone.stage2.blocks[0]
    assert block.dwconv.kernel_size == (3, 3) and block.dwconv.padding == (1, 1)
    assert block.mlp.fc1.out_features == 32
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 10)


def test_in_chans_option():
    model = small_model(in_chans=1)
    assert model.backbone.stem.conv.in_channels == 1
    assert model(torch.randn(1, 1, 32, 32)).shape == (1, 10)


# ---------------------------------------------------------------------------------------------
# Layer-wise lr decay ids (official facebookresearch/ConvNeXt optim_factory.py)
# ---------------------------------------------------------------------------------------------

def official_layer_id(var_name: str) -> int:
    """The official ``get_num_layer_for_convnext``, on the official parameter names."""
    kind, *rest = var_name.split(".")
    if kind == "downsample_layers":
        stage = int(rest[0])
        return {0: 0, 1: 2, 2: 3, 3: 12}[stage]
    if kind == "stages":
        stage, block = int(rest[0]), int(rest[1])
        return {0: 1, 1: 2, 2: 3 + block // 3, 3: 12}[stage]
    return 13


def official_prefix(name: str) -> str:
    """The official ConvNeXt's name for a vislab classifier parameter, as far as it decides
    the layer id (``downsample_layers.<stage>.``, ``stages.<stage>.<block>.``, else ``norm``)."""
    name = re.sub(r"^backbone\.stem\.", "downsample_layers.0.", name)
    name = re.sub(r"^backbone\.stage(\d)\.downsample\.",
                  lambda m: f"downsample_layers.{int(m.group(1)) - 1}.", name)
    name = re.sub(r"^backbone\.stage(\d)\.blocks\.",
                  lambda m: f"stages.{int(m.group(1)) - 1}.", name)
    return name.replace("backbone.pooled_norm.", "norm.")


@pytest.mark.parametrize("name", ["convnext_small", "convnext_base"])
def test_lr_layer_ids_equal_official_grouping(name):
    model = on_meta(lambda: vislab.create_model(name))
    assert model.num_lr_layers == 13
    names = [n for n, _ in model.named_parameters()]
    ids = {n: model.lr_layer_id(n) for n in names}
    assert ids == {n: official_layer_id(official_prefix(n)) for n in names}
    assert ids["backbone.stem.conv.weight"] == 0
    assert ids["backbone.stage2.downsample.conv.weight"] == 2
    assert ids["backbone.stage3.blocks.26.gamma"] == 11
    assert ids["backbone.stage4.downsample.norm.weight"] == 12
    assert ids["backbone.pooled_norm.weight"] == ids["head.fc.weight"] == 13
    assert list(ids.values()) == sorted(ids.values())


def test_lr_layer_ids_spread_shallow_third_stage_over_nine_groups():
    model = on_meta(lambda: vislab.create_model("convnext_tiny"))
    ids = [model.lr_layer_id(f"backbone.stage3.blocks.{b}.dwconv.weight") for b in range(9)]
    assert ids == list(range(3, 12))
    assert model.lr_layer_id("backbone.stage4.blocks.0.gamma") == 12


def test_lr_layer_id_unknown_name_raises():
    model = small_model()
    with pytest.raises(ValueError, match="stage9"):
        model.backbone.lr_layer_id("stage9.blocks.0.gamma")
    assert model.backbone.no_weight_decay() == set()


def test_layer_decay_param_groups_use_official_scales():
    model = on_meta(lambda: vislab.create_model("convnext_small"))
    groups = param_groups(model, weight_decay=0.05, decay_norm_and_bias=False, layer_decay=0.7)
    scale_of = {id(p): g["lr_scale"] for g in groups for p in g["params"]}
    # official: layer_decay ** (num_layers + 1 - layer_id) with num_layers = 12
    assert scale_of[id(model.backbone.stem.conv.weight)] == pytest.approx(0.7 ** 13)
    assert scale_of[id(model.backbone.stage3.blocks[5].mlp.fc1.weight)] == pytest.approx(0.7 ** (13 - 4))
    assert scale_of[id(model.backbone.stage4.blocks[0].gamma)] == pytest.approx(0.7)
    assert scale_of[id(model.head.fc.weight)] == scale_of[id(model.backbone.pooled_norm.weight)] == 1.0
