"""Unit tests for the Vision Transformer: vislab/models/backbones/vit.py, vislab/layers/attention.py,
vislab/layers/pos_embed.py, vislab/models/zoo/vit.py and vislab/convert/timm_vit.py."""
from __future__ import annotations

import math

import pytest
import timm
import torch
from torch import nn

import vislab
from helpers import assert_timm_conversion_matches
from vislab.convert import convert_file
from vislab.convert.timm_vit import timm_vit
from vislab.layers.attention import MultiHeadSelfAttention
from vislab.layers.pos_embed import resize_grid_position_embedding, sincos_2d_position_embedding
from vislab.models.backbones.vit import LayerScale
from vislab.weights import WeightsError, load_state_dict


TINY = dict(patch_size=8, embed_dim=64, depth=3, num_heads=4)
SHALLOW = 2  # blocks of the ViT-S-wide models compared with timm beyond the full-size check


def tiny(**overrides) -> nn.Module:
    torch.manual_seed(0)
    return vislab.create_model("vit_s16", num_classes=10, img_size=32, **{**TINY, **overrides})


def randomised_timm(name: str = "vit_small_patch16_224", **kwargs) -> nn.Module:
    """A timm model whose every parameter and buffer is random: norm scales 1 + noise, LayerScale
    gammas around 1 (they start at ``init_values``), everything else noise of std 0.05."""
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, **kwargs).eval()
    with torch.no_grad():
        for key, value in model.state_dict().items():
            if key.endswith("gamma") or ("norm" in key and key.endswith("weight")):
                value.normal_(1.0, 0.2)
            else:
                value.normal_(0.0, 0.05)
    return model


def converted_vislab(timm_model: nn.Module, name: str = "vit_s16", **overrides) -> nn.Module:
    model = vislab.create_model(name, **overrides).eval()
    load_state_dict(model, timm_vit(timm_model.state_dict()), strict=True, source="timm")
    return model


# ---------------------------------------------------------------------------------------------
# Equivalence with timm
# ---------------------------------------------------------------------------------------------

def test_timm_vit_small_converts_and_matches_logits(tmp_path):
    assert_timm_conversion_matches(randomised_timm(), model=vislab.create_model("vit_s16"), model_name="vit_s16",
                                   folder=tmp_path, image_size=224)


@pytest.mark.parametrize("timm_kwargs, overrides", [
    (dict(init_values=1e-5, global_pool="avg", class_token=False),
     dict(layer_scale_init=1e-5, global_pool="avg", class_token=False)),
    (dict(global_pool="avg"), dict(global_pool="avg")),
], ids=["layer_scale-avg-no_class_token", "avg-with_class_token"])
def test_variants_match_timm(timm_kwargs, overrides):
    reference = randomised_timm(depth=SHALLOW, **timm_kwargs)
    assert isinstance(reference.norm, nn.Identity) and not isinstance(reference.fc_norm, nn.Identity)
    model = converted_vislab(reference, depth=SHALLOW, **overrides)
    torch.manual_seed(1)
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        assert (model(x) - reference(x)).abs().max().item() <= 1e-4


@pytest.fixture(scope="module")
def dynamic_size_pair():
    reference = randomised_timm(depth=SHALLOW, dynamic_img_size=True)
    return reference, converted_vislab(reference, depth=SHALLOW)


@pytest.mark.parametrize("size", [(160, 160), (288, 288), (160, 288)])
def test_position_embedding_resize_matches_timm_dynamic_size(dynamic_size_pair, size):
    reference, model = dynamic_size_pair
    torch.manual_seed(2)
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        assert (model(x) - reference(x)).abs().max().item() <= 1e-4
        assert model.forward_features(x)["last"].shape == (2, 384, size[0] // 16, size[1] // 16)


def test_checkpoint_of_another_variant_lists_mismatched_keys(tmp_path):
    torch.manual_seed(0)
    tiny_vit = timm.create_model("vit_tiny_patch16_224", pretrained=False)
    src = tmp_path / "vit_tiny.pth"
    torch.save(tiny_vit.state_dict(), src)
    with pytest.raises(WeightsError) as info:
        convert_file(source="timm", model_name="vit_s16", src=src, dst=tmp_path / "out.safetensors")
    message = str(info.value)
    assert "mis-shaped" in message
    assert "151 mis-shaped" in message  # every key but head.fc.bias
    assert "backbone.blocks.0.attn.proj.bias (file (192,) vs model (384,))" in message
    assert "backbone.blocks.0.attn.qkv.weight" in message


def test_converter_renames_every_timm_key():
    reference = timm.create_model("vit_small_patch16_224", pretrained=False, init_values=1e-5, depth=SHALLOW)
    converted = timm_vit(reference.state_dict())
    assert "backbone.blocks.1.layer_scale1.gamma" in converted
    assert "backbone.patch_embed.weight" in converted and "head.fc.bias" in converted
    model = vislab.create_model("vit_s16", layer_scale_init=1e-5, depth=SHALLOW)
    assert set(converted) == set(model.state_dict())


# ---------------------------------------------------------------------------------------------
# Features, shapes and input sizes
# ---------------------------------------------------------------------------------------------

def test_forward_features_match_output_shape():
    model = tiny(out_blocks=(0, 1)).eval()
    shapes = model.backbone.output_shape()
    assert list(shapes) == ["block0", "block1", "last"]
    x = torch.randn(2, 3, 48, 40)
    with torch.no_grad():
        features = model.forward_features(x)
    assert list(features) == list(shapes)
    for name, spec in shapes.items():
        assert spec.stride == 8 and spec.channels == 64
        assert features[name].shape == (2, 64, 48 // 8, 40 // 8), name


def test_feature_maps_are_block_outputs_without_final_norm():
    backbone = tiny(out_blocks=(1,)).backbone.eval()
    x = torch.randn(2, 3, 32, 24)
    with torch.no_grad():
        patches, grid = backbone.embed_patches(x)
        tokens = backbone.prepend_class_token(backbone.add_position(patches, grid))
        after_block1 = backbone.blocks[:2](tokens)
        after_last = backbone.blocks[2](after_block1)
        features = backbone.forward_features(x)
    assert grid == (4, 3)
    # patch token r * w + c is the map's pixel (r, c); the class token is left out
    torch.testing.assert_close(features["block1"][:, :, 2, 1], after_block1[:, 1 + 2 * 3 + 1])
    torch.testing.assert_close(features["last"].flatten(2).transpose(1, 2), after_last[:, 1:])


def test_bad_input_size_names_sizes():
    model = vislab.create_model("vit_s16", depth=1).eval()
    with pytest.raises(ValueError, match=r"225x224.*patch size 16"):
        model(torch.randn(1, 3, 225, 224))


def test_resize_is_identity_at_native_grid():
    pos_embed = torch.randn(1, 1 + 14 * 14, 8)
    assert resize_grid_position_embedding(pos_embed, old_grid=(14, 14), new_grid=(14, 14),
                                          num_prefix_tokens=1) is pos_embed
    resized = resize_grid_position_embedding(pos_embed, old_grid=(14, 14), new_grid=(10, 18),
                                             num_prefix_tokens=1)
    assert resized.shape == (1, 1 + 10 * 18, 8)
    assert torch.equal(resized[:, 0], pos_embed[:, 0])  # the class token's entry is kept


def test_invalid_options_raise():
    with pytest.raises(ValueError, match="class_token"):
        tiny(class_token=False)
    with pytest.raises(ValueError, match="out_blocks"):
        tiny(out_blocks=(3,))
    with pytest.raises(ValueError, match="pos_embed"):
        tiny(pos_embed="rope")
    with pytest.raises(ValueError, match="global_pool"):
        tiny(global_pool="max")


# ---------------------------------------------------------------------------------------------
# Sine-cosine position embedding
# ---------------------------------------------------------------------------------------------

def test_sincos_embedding_matches_formula_at_one_position():
    dim, height, width = 16, 3, 4
    table = sincos_2d_position_embedding(embed_dim=dim, grid_size=(height, width))
    assert table.shape == (height * width, dim) and table.dtype == torch.float32
    row, col = 2, 3
    omegas = [1.0 / 10000 ** (2 * i / (dim // 2)) for i in range(dim // 4)]  # 1, 0.1, 0.01, 0.001
    expected = ([math.sin(col * w) for w in omegas] + [math.cos(col * w) for w in omegas]
                + [math.sin(row * w) for w in omegas] + [math.cos(row * w) for w in omegas])
    torch.testing.assert_close(table[row * width + col], torch.tensor(expected))
    # row 0, column 0: all sines 0, all cosines 1
    assert torch.equal(table[0], torch.tensor([0.0] * 4 + [1.0] * 4 + [0.0] * 4 + [1.0] * 4))


def test_sincos_model_embedding_is_fixed_buffer():
    backbone = tiny(pos_embed="sincos").backbone
    assert "pos_embed" not in dict(backbone.named_parameters())
    assert "pos_embed" in backbone.state_dict()
    assert backbone.no_weight_decay() == {"cls_token"}
    table = sincos_2d_position_embedding(embed_dim=64, grid_size=(4, 4))
    assert torch.equal(backbone.pos_embed[0, 0], torch.zeros(64))  # class token entry, as MAE
    assert torch.equal(backbone.pos_embed[0, 1:], table)


# ---------------------------------------------------------------------------------------------
# Attention
# ---------------------------------------------------------------------------------------------

def test_attention_matches_explicit_softmax():
    torch.manual_seed(0)
    attn = MultiHeadSelfAttention(32, num_heads=4).eval()
    x = torch.randn(2, 7, 32)
    q, k, v = attn.qkv(x).reshape(2, 7, 3, 4, 8).permute(2, 0, 3, 1, 4)
    weights = (q @ k.transpose(-2, -1) / math.sqrt(8)).softmax(dim=-1)
    expected = attn.proj((weights @ v).transpose(1, 2).reshape(2, 7, 32))
    with torch.no_grad():
        torch.testing.assert_close(attn(x), expected.detach())
    assert attn.qkv.bias is not None
    assert MultiHeadSelfAttention(32, num_heads=4, qkv_bias=False).qkv.bias is None
    with pytest.raises(ValueError, match="divisible"):
        MultiHeadSelfAttention(30, num_heads=4)


# ---------------------------------------------------------------------------------------------
# Options: drop path, layer scale, pooling
# ---------------------------------------------------------------------------------------------

def test_drop_path_active_in_train_identity_in_eval():
    model = tiny(drop_path_rate=0.5)
    rates = [block.drop_path.drop_prob for block in model.backbone.blocks]
    assert rates == pytest.approx([0.0, 0.25, 0.5])
    plain = tiny(drop_path_rate=0.0)
    plain.load_state_dict(model.state_dict())
    x = torch.randn(8, 3, 32, 32)
    with torch.no_grad():
        model.train()
        torch.manual_seed(3)
        first = model(x)
        second = model(x)
        assert not torch.allclose(first, second)
        model.eval()
        plain.eval()
        torch.testing.assert_close(model(x), plain(x))


def test_layer_scale_gammas_start_at_init_value():
    model = tiny(layer_scale_init=1e-6)
    scales = [m for m in model.modules() if isinstance(m, LayerScale)]
    assert len(scales) == 2 * TINY["depth"]
    assert all(torch.all(m.gamma == 1e-6) for m in scales)
    assert not any(isinstance(m, LayerScale) for m in tiny().modules())
    block = model.backbone.blocks[0].eval()
    x = torch.randn(2, 5, 64)
    with torch.no_grad():
        torch.testing.assert_close(block(x), x, atol=1e-5, rtol=0)  # branches scaled by 1e-6
        assert not torch.allclose(tiny().backbone.blocks[0].eval()(x), x, atol=1e-3)


@pytest.mark.parametrize("class_token", [True, False])
def test_avg_pool_is_norm_of_mean_patch_token(class_token):
    backbone = tiny(global_pool="avg", class_token=class_token).backbone.eval()
    assert (backbone.cls_token is not None) == class_token
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        last = backbone.forward_features(x)["last"]
        torch.testing.assert_close(backbone.forward_pooled(x), backbone.norm(last.mean(dim=(2, 3))))


def test_token_pool_differs_from_avg_pool():
    token = tiny(global_pool="token").eval()
    avg = tiny(global_pool="avg").eval()
    avg.load_state_dict(token.state_dict())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert not torch.allclose(token(x), avg(x), atol=1e-4)


# ---------------------------------------------------------------------------------------------
# Optimiser hooks
# ---------------------------------------------------------------------------------------------

def test_lr_layer_ids_and_no_weight_decay():
    model = tiny()
    backbone = model.backbone
    assert backbone.num_lr_layers == model.num_lr_layers == TINY["depth"] + 1
    ids = {name: model.lr_layer_id(name) for name, _ in model.named_parameters()}
    assert ids["backbone.patch_embed.weight"] == ids["backbone.cls_token"] == ids["backbone.pos_embed"] == 0
    assert ids["backbone.blocks.0.attn.qkv.weight"] == 1
    assert ids["backbone.blocks.2.mlp.fc2.bias"] == 3
    assert ids["backbone.norm.weight"] == ids["head.fc.weight"] == 4
    assert model.no_weight_decay() == {"backbone.pos_embed", "backbone.cls_token"}
    assert tiny(global_pool="avg", class_token=False).no_weight_decay() == {"backbone.pos_embed"}
