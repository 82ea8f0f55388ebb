"""Unit tests for MViTv2 and its pooling attention: registry figures, features, the pooling and
relative-position pieces, timm equivalence, options and lr layer ids."""
from __future__ import annotations

import functools
import re

import pytest
import timm
import torch
from torch import nn

import vislab
from helpers import assert_timm_conversion_matches
from vislab.convert import convert_state_dict
from vislab.convert.timm_mvitv2 import timm_mvitv2
from vislab.layers.pool_attention import PoolingAttention, pool_tokens
from vislab.layers.rel_pos import decomposed_rel_pos_bias, relative_positions, resize_rel_pos
from vislab.models.backbones.mvit_trunk import MultiScaleBlock
from vislab.models.complexity import on_meta
from vislab.models.registry import get_entry
from vislab.weights import WeightsError

# torch's FlopCounterMode on timm's own ``mvitv2_large`` at 224 (the official MViTv2-L layout,
# DIM_MUL_IN_ATT False), halved: the published 42.1 is 3.8% below what this layout computes.
TIMM_LARGE_GMACS = 43.7112

STAGES = ("stage1", "stage2", "stage3", "stage4")
SMALL = {"depths": (1, 2, 2, 1), "embed_dim": 16}


def small_model(**overrides) -> nn.Module:
    torch.manual_seed(0)
    return vislab.create_model("mvitv2_tiny", num_classes=10, **{**SMALL, **overrides})


@functools.lru_cache(maxsize=None)
def info(name: str) -> dict:
    return vislab.model_info(name)


def randomize_(module: nn.Module, *, seed: int) -> None:
    """Every parameter and buffer to random values: LayerNorm scales near 1, relative-position
    tables large enough to move the attention, the rest of order 0.02."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in module.state_dict().items():
            noise = torch.randn(tensor.shape, generator=generator)
            if re.search(r"norm\w*\.weight$", name):
                tensor.copy_(1 + 0.1 * noise)
            elif "rel_pos" in name:
                tensor.copy_(0.2 * noise)
            else:
                tensor.copy_(0.02 * noise)


# ---------------------------------------------------------------------------------------------
# Registry figures
# ---------------------------------------------------------------------------------------------


def test_large_gmacs_match_timm_count_of_same_layout():
    assert info("mvitv2_large")["gmacs"] == pytest.approx(TIMM_LARGE_GMACS, rel=1e-4)


def test_registry_entries_and_large_layout():
    names = {n for n in vislab.list_models(task="classification") if n.startswith("mvitv2")}
    assert names == {"mvitv2_tiny", "mvitv2_small", "mvitv2_base", "mvitv2_large"}
    assert all(get_entry(n).family == "mvitv2" for n in names)
    large = on_meta(lambda: vislab.create_model("mvitv2_large")).backbone
    # the previous stage's last MLP widens the tokens, so stages 1-3 carry the next width
    assert [large.output_shape()[s].channels for s in STAGES] == [288, 576, 1152, 1152]
    assert large.stage1[-1].shortcut_proj_mlp.out_features == 288
    assert large.stage2[0].shortcut_proj_attn is None


# ---------------------------------------------------------------------------------------------
# Features and shapes
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dim_mul_in_att, channels, height, width", [
    (True, [16, 32, 64, 128], 64, 64),
    (True, [16, 32, 64, 128], 128, 96),  # larger than img_size: resampled relative positions
    (False, [32, 64, 128, 128], 96, 64),
])
def test_forward_features_match_output_shape(dim_mul_in_att, channels, height, width):
    model = small_model(dim_mul_in_att=dim_mul_in_att, img_size=64).eval()
    shapes = model.backbone.output_shape()
    assert list(shapes) == list(STAGES)
    assert [shapes[s].stride for s in STAGES] == [4, 8, 16, 32]
    assert [shapes[s].channels for s in STAGES] == channels
    x = torch.randn(2, 3, height, width)
    with torch.no_grad():
        features = model.forward_features(x)
        logits = model(x)
    assert list(features) == list(STAGES)
    for stage in STAGES:
        stride = shapes[stage].stride
        assert features[stage].shape == (2, shapes[stage].channels, height // stride, width // stride)
    assert logits.shape == (2, 10)
    assert model.backbone.num_features == channels[-1] == model.head.fc.in_features


def test_default_tiny_channels_and_rel_pos_tables():
    model = on_meta(lambda: vislab.create_model("mvitv2_tiny")).backbone
    assert [model.output_shape()[s].channels for s in STAGES] == [96, 192, 384, 768]
    # tables of 2 * max(q side, kv side) - 1 rows at 224: 56 vs 14, 28 vs 28 (first of stage 2)
    assert model.stage1[0].attn.rel_pos_h.shape == (111, 96)
    assert model.stage2[0].attn.rel_pos_w.shape == (55, 96)
    assert model.stage4[1].attn.rel_pos_h.shape == (13, 96)


def test_adaptive_kv_stride_and_query_stride_per_stage():
    model = on_meta(lambda: vislab.create_model("mvitv2_tiny")).backbone
    kv = [getattr(model, s)[0].attn.pool_k.conv.stride for s in STAGES]
    assert kv == [(4, 4), (2, 2), (1, 1), (1, 1)]
    q = [block.attn.pool_q.conv.stride for s in STAGES for block in getattr(model, s)]
    assert q == [(1, 1), (2, 2), (1, 1), (2, 2)] + [(1, 1)] * 4 + [(2, 2), (1, 1)]
    assert [getattr(model, s)[0].attn.num_heads for s in STAGES] == [1, 2, 4, 8]


@pytest.mark.parametrize("height, width", [(100, 224), (224, 200)])
def test_input_not_multiple_of_32_is_refused_with_size(height, width):
    model = small_model()
    with pytest.raises(ValueError, match=f"{height}x{width}") as error:
        model(torch.randn(1, 3, height, width))
    assert "32" in str(error.value)


def test_img_size_not_multiple_of_32_is_refused():
    with pytest.raises(ValueError, match="img_size 200"):
        small_model(img_size=200)


# ---------------------------------------------------------------------------------------------
# Pooling attention pieces
# ---------------------------------------------------------------------------------------------

def attention(**overrides) -> PoolingAttention:
    torch.manual_seed(0)
    options = dict(num_heads=2, input_size=(16, 16), q_stride=(2, 2), kv_stride=(4, 4),
                   pool_kernel=(3, 3))
    return PoolingAttention(8, 16, **{**options, **overrides})


def test_pooling_attention_shapes_with_q_stride_2_and_kv_stride_4():
    layer = attention()
    x = torch.randn(2, 16 * 12, 8)
    out, thw = layer(x, (16, 12))
    assert thw == (8, 6)
    assert out.shape == (2, 8 * 6, 16)
    keys, k_thw = layer.pool_k(torch.randn(2, 2, 16 * 12, 8), (16, 12))
    assert k_thw == (4, 3) and keys.shape == (2, 2, 12, 8)
    # tables for the design grid: queries 8, keys 4 per side -> 2 * 8 - 1 rows of head width 8
    assert layer.rel_pos_h.shape == layer.rel_pos_w.shape == (15, 8)


def test_pool_tokens_keeps_head_and_token_layout():
    x = torch.arange(2 * 3 * 4 * 6 * 5, dtype=torch.float32).reshape(2, 3, 4 * 6, 5)
    pooled, thw = pool_tokens(x, (4, 6), nn.MaxPool2d(2, stride=2))
    assert thw == (2, 3) and pooled.shape == (2, 3, 6, 5)
    grid = x.reshape(2, 3, 4, 6, 5)
    # token (1, 2) of the pooled grid is the max of rows 2-3, columns 4-5
    torch.testing.assert_close(pooled[:, :, 1 * 3 + 2], grid[:, :, 2:4, 4:6].amax(dim=(2, 3)))


def test_residual_pooling_adds_projected_pooled_queries():
    layer = attention()
    without = attention(residual_pooling=False)
    without.load_state_dict(layer.state_dict())
    x = torch.randn(2, 256, 8)
    with torch.no_grad():
        out, _ = layer(x, (16, 16))
        out_without, _ = without(x, (16, 16))
        q = layer.qkv(x).reshape(2, 256, 3, 2, 8).permute(2, 0, 3, 1, 4)[0]
        q, _ = layer.pool_q(q, (16, 16))
        expected = q.transpose(1, 2).reshape(2, 64, 16) @ layer.proj.weight.T
    assert (out - out_without).abs().max() > 1e-2
    torch.testing.assert_close(out - out_without, expected, atol=1e-5, rtol=1e-4)


def test_decomposed_rel_pos_bias_matches_explicit_sum():
    torch.manual_seed(0)
    q_thw, k_thw = (4, 6), (2, 3)
    q = torch.randn(2, 3, 24, 5)
    table_h, table_w = torch.randn(7, 5), torch.randn(11, 5)
    bias = decomposed_rel_pos_bias(q, q_thw, k_thw, [table_h, table_w])
    assert bias.shape == (2, 3, 24, 6)
    expected = torch.empty_like(bias)
    for qh in range(4):
        for qw in range(6):
            for kh in range(2):
                for kw in range(3):
                    # keys on a grid twice as coarse: offsets compared on the query grid
                    rel = table_h[qh - 2 * kh + 2] + table_w[qw - 2 * kw + 4]
                    expected[:, :, qh * 6 + qw, kh * 3 + kw] = q[:, :, qh * 6 + qw] @ rel
    torch.testing.assert_close(bias, expected)


def test_relative_positions_resample_table_for_other_grids():
    table = torch.randn(7, 4)
    assert resize_rel_pos(table, 7) is table
    assert resize_rel_pos(table, 13).shape == (13, 4)
    # same-size grids index offset q - k + (k - 1)
    torch.testing.assert_close(relative_positions(table, 4, 4)[3, 0], table[6])
    assert relative_positions(table, 8, 8).shape == (8, 8, 4)


def test_rel_pos_off_has_no_tables_and_changes_output():
    with_rel = small_model().eval()
    without = small_model(rel_pos=False).eval()
    assert without.backbone.no_weight_decay() == set()
    assert not any("rel_pos" in n for n, _ in without.named_parameters())
    state = {k: v for k, v in with_rel.state_dict().items() if "rel_pos" not in k}
    without.load_state_dict(state)
    with torch.no_grad():
        for name, table in with_rel.named_parameters():
            if "rel_pos" in name:
                table.normal_(std=0.5)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert (with_rel(x) - without(x)).abs().max() > 1e-3


def test_residual_pooling_option_reaches_every_block():
    model = small_model(residual_pooling=False)
    blocks = [m for m in model.modules() if isinstance(m, MultiScaleBlock)]
    assert len(blocks) == 6 and not any(b.attn.residual_pooling for b in blocks)
    assert all(b.attn.residual_pooling for b in small_model().modules() if isinstance(b, MultiScaleBlock))


# ---------------------------------------------------------------------------------------------
# timm equivalence and weight conversion
# ---------------------------------------------------------------------------------------------

def test_timm_mvitv2_tiny_converts_to_same_logits(tmp_path):
    # built on the meta device and materialised uninitialised: randomize_ sets every tensor
    reference = on_meta(lambda: timm.create_model("mvitv2_tiny", pretrained=False))
    reference = reference.to_empty(device="cpu").eval()
    randomize_(reference, seed=1)
    model = on_meta(lambda: vislab.create_model("mvitv2_tiny")).to_empty(device="cpu")
    assert_timm_conversion_matches(reference, model=model, model_name="mvitv2_tiny", folder=tmp_path, image_size=224)


def test_timm_weights_of_another_variant_are_refused_with_keys():
    small = on_meta(lambda: timm.create_model("mvitv2_small", pretrained=False))
    state_dict = {k: torch.empty(v.shape) for k, v in small.state_dict().items()}
    with pytest.raises(WeightsError) as error:
        convert_state_dict(source="timm", model_name="mvitv2_tiny", state_dict=state_dict)
    message = str(error.value)
    assert "138 unexpected" in message  # stage 3 blocks 5..10: 6 blocks of 23 tensors each
    assert "backbone.stage3.10.attn.pool_k.conv.weight" in message
    assert "missing" not in message and "mis-shaped" not in message


def test_converted_keys_cover_the_model_exactly():
    timm_keys = on_meta(lambda: timm.create_model("mvitv2_large", pretrained=False)).state_dict()
    converted = set(timm_mvitv2(timm_keys))
    assert converted == set(on_meta(lambda: vislab.create_model("mvitv2_large")).state_dict())


# ---------------------------------------------------------------------------------------------
# Drop path, weight decay and lr layer ids
# ---------------------------------------------------------------------------------------------

def test_drop_path_rates_rise_linearly_over_all_blocks():
    model = small_model(drop_path_rate=0.5)
    rates = [m.drop_path.drop_prob for m in model.modules() if isinstance(m, MultiScaleBlock)]
    assert rates == pytest.approx([0.1 * i for i in range(6)])


def test_drop_path_active_in_train_and_identity_in_eval():
    model = small_model(drop_path_rate=0.9)
    x = torch.randn(4, 3, 64, 64)
    with torch.no_grad():
        model.train()
        torch.manual_seed(1)
        first = model(x)
        torch.manual_seed(2)
        second = model(x)
        assert (first - second).abs().max() > 1e-4
        model.eval()
        torch.testing.assert_close(model(x), model(x))
        plain = small_model().eval()
        torch.testing.assert_close(model(x), plain(x))


def test_no_weight_decay_lists_every_rel_pos_table():
    model = small_model()
    names = model.no_weight_decay()
    assert len(names) == 2 * 6
    assert "backbone.stage1.0.attn.rel_pos_h" in names
    params = dict(model.named_parameters())
    assert all(n in params and params[n].ndim == 2 for n in names)


def test_lr_layer_ids_count_blocks_across_stages():
    model = small_model()  # depths 1-2-2-1: 6 blocks
    assert model.num_lr_layers == model.backbone.num_lr_layers == 7
    ids = {name: model.lr_layer_id(name) for name, _ in model.named_parameters()}
    assert ids["backbone.patch_embed.weight"] == 0
    assert ids["backbone.stage1.0.attn.qkv.weight"] == 1
    assert ids["backbone.stage2.0.norm1.weight"] == 2
    assert ids["backbone.stage2.1.mlp.fc2.bias"] == 3
    assert ids["backbone.stage3.0.attn.rel_pos_h"] == 4
    assert ids["backbone.stage4.0.shortcut_proj_attn.weight"] == 6
    assert ids["backbone.norm.weight"] == 7
    assert ids["head.fc.weight"] == 7
    assert set(ids.values()) == set(range(8))
