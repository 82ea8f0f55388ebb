"""Video MViT / MViTv2: registry figures, pytorchvideo equivalence of MViT-B, the class token and
temporal relative positions in the shared pooling attention, features and options."""
from __future__ import annotations

import re

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import vislab
from vislab.cli import _parser
from vislab.convert import CONVERTERS
from vislab.convert.pytorchvideo_mvit import pytorchvideo_mvit
from vislab.layers.pool_attention import PoolingAttention
from vislab.models.complexity import on_meta
from vislab.models.registry import get_entry
from vislab.weights import WeightsError, load_state_dict

NAMES = ("mvit_b_16x4", "mvit_b_32x3", "mvitv2_s_16x4", "mvitv2_b_32x3")
STAGES = ("stage1", "stage2", "stage3", "stage4")
# ../shared/reference/model-figures.md, "Video models": (params, GMACs, frames); v2 params are
# published rounded to 0.1M
EXACT_PARAMS = {"mvit_b_16x4": 36_610_672}
PUBLISHED = {"mvit_b_16x4": (36.6, 70.5, 16), "mvit_b_32x3": (36.6, 170, 32),
             "mvitv2_s_16x4": (34.5, 64, 16), "mvitv2_b_32x3": (51.2, 225, 32)}
# pytorchvideo's own count of its mvit_base_32x3 (16 more temporal position rows of 96 than 16x4)
PYTORCHVIDEO_32X3_PARAMS = 36_611_440
SMALL_CLIP = (4, 64, 64)  # frames, height, width: a 2x16x16 token grid


def small_model(name: str, **overrides) -> nn.Module:
    torch.manual_seed(0)
    options = dict(depths=(1, 1, 2, 1), embed_dim=16, num_frames=4, img_size=64)
    return vislab.create_model(name, num_classes=5, **{**options, **overrides}).eval()


def randomize_(module: nn.Module, *, seed: int) -> None:
    """Every tensor to random values: LayerNorm scales near 1, position embeddings and the class
    token large enough to matter, the rest of order 0.02."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in module.state_dict().items():
            noise = torch.randn(tensor.shape, generator=generator)
            if re.search(r"norm\w*\.weight$", name):
                tensor.copy_(1 + 0.1 * noise)
            elif re.search(r"pos_embed|cls_token|rel_pos", name):
                tensor.copy_(0.3 * noise)
            else:
                tensor.copy_(0.02 * noise)


# ---------------------------------------------------------------------------------------------
# Registry figures
# ---------------------------------------------------------------------------------------------

def test_entries_are_kinetics_video_models():
    assert set(NAMES) <= set(vislab.list_models(task="video"))
    for name in NAMES:
        entry = get_entry(name)
        assert (entry.family, entry.num_classes) == ("mvit_video", 400)
        assert entry.input_size == (3, PUBLISHED[name][2], 224, 224)


@pytest.mark.parametrize("name", NAMES)
def test_params_and_gmacs_match_published(name):
    info = vislab.model_info(name)
    millions, gmacs, _ = PUBLISHED[name]
    assert round(info["params"] / 1e6, 1) == millions
    assert info["params"] == get_entry(name).reference.params or get_entry(name).reference.params is None
    assert abs(info["gmacs"] - gmacs) / gmacs <= 0.02, (info["gmacs"], gmacs)


def test_exact_params_of_pytorchvideo_layouts():
    assert vislab.model_info("mvit_b_16x4")["params"] == EXACT_PARAMS["mvit_b_16x4"]
    assert vislab.model_info("mvit_b_32x3")["params"] == PYTORCHVIDEO_32X3_PARAMS


# ---------------------------------------------------------------------------------------------
# pytorchvideo equivalence and conversion
# ---------------------------------------------------------------------------------------------

def test_pytorchvideo_mvit_base_16x4_converts_to_same_logits(monkeypatch):
    from pytorchvideo.models import vision_transformers
    from pytorchvideo.models.hub import mvit_base_16x4

    # randomize_ sets every tensor, so pytorchvideo's slow initialisation is skipped
    monkeypatch.setattr(vision_transformers, "init_net_weights", lambda *args, **kwargs: None)
    frames, height, _ = SMALL_CLIP
    reference = mvit_base_16x4(pretrained=False, temporal_size=frames, spatial_size=height).eval()
    randomize_(reference, seed=1)
    converted = pytorchvideo_mvit(reference.state_dict())
    model = on_meta(lambda: vislab.create_model("mvit_b_16x4", num_frames=frames, img_size=height))
    model = model.to_empty(device="cpu").eval()
    load_state_dict(model, converted, strict=True, source="pytorchvideo mvit_base_16x4")
    x = torch.randn(2, 3, *SMALL_CLIP, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = reference(x)
        logits = model(x)
    assert expected.shape == logits.shape == (2, 400)
    assert expected.std() > 0.1  # random weights that give a non-trivial output
    assert (logits - expected).abs().max().item() <= 1e-4


def test_converter_concatenates_qkv_and_splits_stages_at_query_pooling():
    state = {"blocks.0.attn.q.weight": torch.full((2, 2), 1.0), "blocks.0.attn.k.weight": torch.full((2, 2), 2.0),
             "blocks.0.attn.v.weight": torch.full((2, 2), 3.0), "blocks.0.proj.weight": torch.zeros(4, 2)}
    for block in (1, 3, 5):
        state[f"blocks.{block}.attn.pool_q.weight"] = torch.zeros(1)
        state[f"blocks.{block}.attn.norm_q.bias"] = torch.zeros(1)
    state.update({"blocks.2.attn.proj.weight": torch.zeros(1), "blocks.6.mlp.fc1.weight": torch.zeros(1)})
    converted = pytorchvideo_mvit(state)
    assert converted["backbone.stage1.0.attn.qkv.weight"][:, 0].tolist() == [1, 1, 2, 2, 3, 3]
    assert set(converted) == {
        "backbone.stage1.0.attn.qkv.weight", "backbone.stage1.0.shortcut_proj_mlp.weight",
        "backbone.stage2.0.attn.pool_q.conv.weight", "backbone.stage2.0.attn.pool_q.norm.bias",
        "backbone.stage2.1.attn.proj.weight",
        "backbone.stage3.0.attn.pool_q.conv.weight", "backbone.stage3.0.attn.pool_q.norm.bias",
        "backbone.stage4.0.attn.pool_q.conv.weight", "backbone.stage4.0.attn.pool_q.norm.bias",
        "backbone.stage4.1.mlp.fc1.weight"}


def test_converter_refuses_weights_without_four_stages():
    state = {"blocks.0.norm1.weight": torch.ones(2), "blocks.1.attn.pool_q.weight": torch.ones(1)}
    with pytest.raises(WeightsError, match=r"4 stages.*\[0, 1\]"):
        pytorchvideo_mvit(state)


def test_converter_is_registered_and_offered_by_the_cli():
    assert CONVERTERS[("pytorchvideo", "mvit_video")] is pytorchvideo_mvit
    args = _parser().parse_args(["convert", "--from", "pytorchvideo", "--model", "mvit_b_16x4", "a.pyth", "b.st"])
    assert args.source == "pytorchvideo"


# ---------------------------------------------------------------------------------------------
# Pooling attention with a class token and a temporal axis
# ---------------------------------------------------------------------------------------------

def slowfast_attention(layer: PoolingAttention, x: torch.Tensor, thw: tuple[int, int, int]) -> torch.Tensor:
    """PySlowFast's MViTv2 ``MultiScaleAttention.forward`` with a class token, written out:
    ``attention_pool`` leaves the class token unpooled and normalises it with the pooled tokens;
    ``cal_rel_pos_spatial`` / ``cal_rel_pos_temporal`` add ``q_i . (R_t + R_h + R_w)`` to the
    grid part of the logits, one (query, key) pair at a time; residual pooling skips the class
    token."""
    batch, tokens, _ = x.shape
    heads, head_dim = layer.num_heads, layer.head_dim
    q, k, v = layer.qkv(x).reshape(batch, tokens, 3, heads, head_dim).permute(2, 0, 3, 1, 4)

    def attention_pool(t, pool):
        cls_token, grid = t[:, :, :1], t[:, :, 1:]
        grid = pool.conv(grid.reshape(batch * heads, *thw, head_dim).permute(0, 4, 1, 2, 3))
        shape = tuple(grid.shape[2:])
        grid = grid.reshape(batch, heads, head_dim, -1).transpose(2, 3)
        return pool.norm(torch.cat([cls_token, grid], dim=2)), shape

    q, q_shape = attention_pool(q, layer.pool_q)
    k, k_shape = attention_pool(k, layer.pool_k)
    v, _ = attention_pool(v, layer.pool_v)
    attn = (q * head_dim**-0.5) @ k.transpose(-2, -1)
    tables = (layer.rel_pos_t, layer.rel_pos_h, layer.rel_pos_w)
    q_cells = [(a, b, c) for a in range(q_shape[0]) for b in range(q_shape[1]) for c in range(q_shape[2])]
    k_cells = [(a, b, c) for a in range(k_shape[0]) for b in range(k_shape[1]) for c in range(k_shape[2])]
    bias = torch.zeros_like(attn)
    for i, q_cell in enumerate(q_cells):
        for j, k_cell in enumerate(k_cells):
            rel = 0
            for axis, table in enumerate(tables):
                q_ratio = max(k_shape[axis] / q_shape[axis], 1.0)
                k_ratio = max(q_shape[axis] / k_shape[axis], 1.0)
                offset = q_cell[axis] * q_ratio - k_cell[axis] * k_ratio + (k_shape[axis] - 1) * k_ratio
                rel = rel + table[int(offset)]
            bias[:, :, 1 + i, 1 + j] = q[:, :, 1 + i] @ rel
    out = (attn + bias).softmax(dim=-1) @ v
    out[:, :, 1:] += q[:, :, 1:]
    return layer.proj(out.transpose(1, 2).reshape(batch, -1, layer.dim_out))


def test_class_token_attention_with_temporal_rel_pos_matches_pyslowfast():
    torch.manual_seed(0)
    thw = (4, 4, 4)
    layer = PoolingAttention(8, 16, num_heads=2, input_size=thw, q_stride=(1, 2, 2), kv_stride=(2, 2, 2),
                             pool_kernel=(3, 3, 3), num_prefix_tokens=1)
    # tables for the design grid: t 4 vs 2 -> 7 rows, h and w 2 vs 2 -> 3 rows, of head width 8
    assert [tuple(t.shape) for t in layer.rel_pos_tables] == [(7, 8), (3, 8), (3, 8)]
    with torch.no_grad():
        for table in layer.rel_pos_tables:
            table.normal_(std=0.5)
    x = torch.randn(2, 1 + 4 * 4 * 4, 8)
    with torch.no_grad():
        out, out_thw = layer(x, thw)
        expected = slowfast_attention(layer, x, thw)
    assert out_thw == (4, 2, 2) and out.shape == (2, 1 + 16, 16)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-4)


def test_temporal_table_moves_only_grid_tokens_and_class_token_is_unpooled():
    torch.manual_seed(0)
    layer = PoolingAttention(8, 8, num_heads=1, input_size=(2, 4, 4), q_stride=(1, 1, 1), kv_stride=(1, 2, 2),
                             pool_kernel=(3, 3, 3), num_prefix_tokens=1, residual_pooling=False)
    x = torch.randn(1, 1 + 32, 8)
    with torch.no_grad():
        before, _ = layer(x, (2, 4, 4))
        layer.rel_pos_t.normal_(std=1.0)
        after, _ = layer(x, (2, 4, 4))
    assert layer.rel_pos_t.shape == (3, 8)
    # the class token's query takes no bias, so its output keeps the same keys' weights
    torch.testing.assert_close(after[:, 0], before[:, 0])
    assert (after[:, 1:] - before[:, 1:]).abs().max() > 1e-3


def test_model_rel_pos_tables_have_temporal_term():
    v2 = on_meta(lambda: vislab.create_model("mvitv2_s_16x4")).backbone
    # 16 frames -> 8 token frames: 2 * 8 - 1 temporal rows everywhere; spatial as the image model
    assert v2.stage1[0].attn.rel_pos_t.shape == (15, 96)
    assert v2.stage1[0].attn.rel_pos_h.shape == (111, 96)  # queries 56, keys 56 / 8
    assert v2.stage2[0].attn.rel_pos_w.shape == (55, 192 // 2)  # queries 28, keys 14
    assert v2.stage4[1].attn.rel_pos_t.shape == (15, 96)
    v1 = on_meta(lambda: vislab.create_model("mvit_b_16x4")).backbone
    assert not any("rel_pos" in name for name, _ in v1.named_parameters())
    assert v1.pos_embed_temporal.shape == (1, 8, 96) and v1.pos_embed_spatial.shape == (1, 56 * 56, 96)


def blocks(model: nn.Module) -> list[nn.Module]:
    return [block for stage in STAGES for block in getattr(model, stage)]


def test_query_pooling_every_block_in_v2_and_only_at_transitions_in_v1():
    v1 = on_meta(lambda: vislab.create_model("mvit_b_16x4")).backbone
    v2 = on_meta(lambda: vislab.create_model("mvitv2_s_16x4")).backbone
    assert [b.attn.pool_q is not None for b in blocks(v1)] == [i in (1, 3, 14) for i in range(16)]
    assert [b.attn.pool_q.conv.stride for b in blocks(v2)] == [
        (1, 2, 2) if i in (1, 3, 14) else (1, 1, 1) for i in range(16)]
    assert [getattr(v1, s)[0].attn.pool_k.conv.stride for s in STAGES] == [(1, 8, 8), (1, 4, 4), (1, 2, 2), (1, 1, 1)]
    assert [getattr(v2, s)[0].attn.num_heads for s in STAGES] == [1, 2, 4, 8]
    # v1 widens in a stage's last MLP, v2 in a stage's first attention
    assert v1.stage1[0].shortcut_proj_mlp.out_features == 192 and v1.stage2[0].shortcut_proj_attn is None
    assert v2.stage2[0].shortcut_proj_attn.out_features == 192 and v2.stage1[0].shortcut_proj_mlp is None


# ---------------------------------------------------------------------------------------------
# Features, pooled output and options
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, channels", [
    ("mvit_b_16x4", [32, 64, 128, 128]),  # a stage's last MLP widens to the next stage's width
    ("mvitv2_s_16x4", [16, 32, 64, 128]),
])
def test_forward_features_match_output_shape(name, channels):
    model = small_model(name)
    shapes = model.backbone.output_shape()
    assert [shapes[s].stride for s in STAGES] == [4, 8, 16, 32]
    assert [shapes[s].channels for s in STAGES] == channels
    x = torch.randn(2, 3, *SMALL_CLIP)
    with torch.no_grad():
        features = model.forward_features(x)
        pooled = model.backbone.forward_pooled(x)
        logits = model(x)
    for stage in STAGES:
        side = 64 // shapes[stage].stride
        assert features[stage].shape == (2, shapes[stage].channels, 2, side, side)
    assert pooled.shape == (2, 128) and logits.shape == (2, 5)
    torch.testing.assert_close(model.head.fc(pooled), logits)


def test_pooled_output_is_the_normed_class_token():
    model = small_model("mvitv2_s_16x4")
    randomize_(model, seed=3)
    x = torch.randn(1, 3, *SMALL_CLIP)
    with torch.no_grad():
        _, tokens, _ = model.backbone._stage_tokens(x)[-1]
        pooled = model.backbone.forward_pooled(x)
    torch.testing.assert_close(pooled, F.layer_norm(tokens[:, 0], (128,), model.backbone.norm.weight,
                                                    model.backbone.norm.bias, eps=1e-6))


def test_v2_takes_other_clip_sizes_and_v1_names_the_size_it_needs():
    v2 = small_model("mvitv2_s_16x4")
    with torch.no_grad():
        assert v2(torch.randn(1, 3, 8, 96, 64)).shape == (1, 5)  # tables resampled
    v1 = small_model("mvit_b_16x4")
    with pytest.raises(ValueError, match=r"4x64x64.*\(4, 24, 16\)"):
        v1(torch.randn(1, 3, 8, 96, 64))


@pytest.mark.parametrize("clip", [(5, 64, 64), (4, 48, 64)])
def test_clip_sizes_off_the_strides_are_refused(clip):
    with pytest.raises(ValueError, match="x".join(map(str, clip))):
        small_model("mvitv2_s_16x4")(torch.randn(1, 3, *clip))


def test_no_weight_decay_and_lr_layer_ids():
    v1, v2 = small_model("mvit_b_16x4"), small_model("mvitv2_s_16x4")
    assert v1.no_weight_decay() == {f"backbone.{n}" for n in
                                    ("cls_token", "pos_embed_spatial", "pos_embed_temporal", "pos_embed_class")}
    assert len(v2.no_weight_decay()) == 1 + 3 * 5 and "backbone.stage3.1.attn.rel_pos_t" in v2.no_weight_decay()
    ids = {name: v1.lr_layer_id(name) for name, _ in v1.named_parameters()}
    assert ids["backbone.pos_embed_temporal"] == ids["backbone.patch_embed.weight"] == 0
    assert ids["backbone.stage3.1.attn.qkv.weight"] == 4
    assert ids["backbone.norm.weight"] == ids["head.fc.weight"] == v1.num_lr_layers == 6


def test_head_dropout_defaults_to_official_rate():
    assert small_model("mvit_b_16x4").head.dropout.p == 0.5
