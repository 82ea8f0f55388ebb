"""ViTDet's plain backbone (vislab/models/backbones/vit.py detection options, layers/windows.py,
layers/rel_pos.py), its simple pyramid, the Li et al. (2021) adaptor, and the transfer of
pre-trained ViT weights into the trunk; equivalence with Hugging Face ``transformers``'
``VitDetBackbone`` (a line-for-line port of detectron2's ViT)."""
from __future__ import annotations

import math
import re

import pytest
import torch
from torch.nn import functional as F

import vislab
from vislab.engine.block_wrapping import wrap_blocks
from vislab.engine.optim import param_groups
from vislab.layers.rel_pos import relative_positions, resize_rel_pos
from vislab.layers.windows import window_partition, window_unpartition
from vislab.models.backbones.vit import VisionTransformer
from vislab.models.necks.simple_pyramid import SimpleFeaturePyramid
from vislab.models.necks.vit_adaptor import ViTAdaptorFPN, quarter_blocks
from vislab.models.shape_spec import ShapeSpec
from vislab.weights import load_backbone_weights, save_weights

TRUNK = dict(patch_size=16, embed_dim=32, depth=4, num_heads=2, class_token=False, global_pool="avg",
             img_size=128, window_size=4, global_blocks=(1, 3), rel_pos=True, residual_blocks=(2,),
             final_norm=False, pretrain_img_size=224, pretrain_class_token=True, pos_resize_antialias=False)


def randomised(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Every floating-point tensor perturbed, so zero-initialised tables and unit norms count."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for tensor in module.state_dict().values():
            if tensor.is_floating_point():
                tensor.add_(0.1 * torch.randn(tensor.shape, generator=generator))
    return module.eval()


def test_window_partition_pads_bottom_right_and_unpartition_inverts():
    x = torch.arange(2 * 5 * 7 * 3, dtype=torch.float32).reshape(2, 5, 7, 3)
    windows, padded = window_partition(x, 3)
    assert padded == (6, 9) and windows.shape == (2 * 2 * 3, 3, 3, 3)
    torch.testing.assert_close(windows[1], x[0, 0:3, 3:6])  # row-major over windows
    torch.testing.assert_close(windows[5, :2, :1], x[0, 3:5, 6:7])  # the last window of image 0 ...
    assert windows[5, 2].abs().sum() == 0 and windows[5, :, 1:].abs().sum() == 0  # ... is zero-padded
    torch.testing.assert_close(window_unpartition(windows, 3, padded=padded, size=(5, 7)), x)


def test_rel_pos_tables_resize_linearly_and_index_offsets():
    table = torch.arange(5, dtype=torch.float32)[:, None].repeat(1, 2)  # offsets -2..2 of a 3-grid
    resized = resize_rel_pos(table, 9)
    assert resized.shape == (9, 2)
    torch.testing.assert_close(resized[:, 0], F.interpolate(table.T[None], size=9, mode="linear")[0, 0])
    rel = relative_positions(table, 3, 3)  # query i, key j -> table[i - j + 2]
    torch.testing.assert_close(rel[..., 0], torch.tensor([[2.0, 1, 0], [3, 2, 1], [4, 3, 2]]))


@pytest.mark.parametrize("prefix, q_thw, k_thw", [(0, (4, 6), (4, 6)), (1, (4, 6), (2, 3)), (0, (2, 3, 4), (1, 3, 2))])
def test_rel_pos_attention_in_training_equals_the_masked_form(prefix, q_thw, k_thw):
    """The extended queries and keys used when gradients flow give the same output and the same
    gradients as the additive mask (with prefix tokens, pooled keys and a temporal axis)."""
    from vislab.layers.rel_pos import decomposed_rel_pos_bias, rel_pos_attention

    generator = torch.Generator().manual_seed(0)
    heads, channels = 2, 8
    q = torch.randn(3, heads, prefix + math.prod(q_thw), channels, generator=generator).requires_grad_()
    k, v = (torch.randn(3, heads, prefix + math.prod(k_thw), channels, generator=generator).requires_grad_()
            for _ in range(2))
    tables = [torch.randn(2 * max(a, b) - 1, channels, generator=generator).requires_grad_()
              for a, b in zip(q_thw, k_thw)]
    extended = rel_pos_attention(q, k, v, q_thw=q_thw, k_thw=k_thw, tables=tables, num_prefix_tokens=prefix)
    bias = F.pad(decomposed_rel_pos_bias(q[:, :, prefix:], q_thw, k_thw, tables), (prefix, 0, prefix, 0))
    masked = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
    torch.testing.assert_close(extended, masked, atol=1e-5, rtol=1e-5)
    weights = torch.randn(masked.shape, generator=generator)
    inputs = [q, k, v, *tables]
    for expected, got in zip(torch.autograd.grad((masked * weights).sum(), inputs),
                             torch.autograd.grad((extended * weights).sum(), inputs)):
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    with torch.no_grad():  # inference takes the mask itself
        torch.testing.assert_close(rel_pos_attention(q, k, v, q_thw=q_thw, k_thw=k_thw, tables=tables,
                                                     num_prefix_tokens=prefix), masked, atol=1e-5, rtol=1e-5)


def test_trunk_blocks_follow_window_and_global_options():
    trunk = VisionTransformer(**TRUNK)
    assert [b.window_size for b in trunk.blocks] == [4, 0, 4, 0]
    assert [tuple(b.attn.rel_pos_h.shape) for b in trunk.blocks] == [(7, 16), (15, 16), (7, 16), (15, 16)]
    assert [b.residual is not None for b in trunk.blocks] == [False, False, True, False]
    assert trunk.cls_token is None and trunk.pos_embed.shape == (1, 197, 32)  # 14x14 table + class slot
    assert all(not b.attn.rel_pos_h.any() for b in trunk.blocks)  # zero-initialised
    assert isinstance(trunk.norm, torch.nn.Identity)


def _transformers_names(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    rules = ((r"^patch_embed\.", "embeddings.projection."), (r"^pos_embed$", "embeddings.position_embeddings"),
             (r"^blocks\.(\d+)\.attn\.", r"encoder.layer.\1.attention."), (r"^blocks\.", "encoder.layer."))
    renamed = {}
    for key, value in state_dict.items():
        for pattern, replacement in rules:
            key = re.sub(pattern, replacement, key)
        renamed[key] = value
    return renamed


def test_trunk_equals_transformers_vitdet_backbone_with_window_padding():
    """A non-square input whose 10x14 token grid needs window padding (windows of 4), position
    table resized from 14x14, global blocks' relative-position tables resized from 8x8."""
    transformers = pytest.importorskip("transformers")
    config = transformers.VitDetConfig(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, image_size=128,
                                       pretrain_image_size=224, patch_size=16, window_size=4,
                                       window_block_indices=[0, 2], residual_block_indices=[2],
                                       use_relative_position_embeddings=True, out_features=["stage4"])
    reference = randomised(transformers.VitDetBackbone(config))
    trunk = VisionTransformer(**TRUNK).eval()
    trunk.load_state_dict({k: v for k, v in _inverse(reference.state_dict()).items()})
    x = torch.randn(2, 3, 160, 224, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = reference(x).feature_maps[0]
        ours = trunk.forward_features(x)["last"]
    assert ours.shape == expected.shape == (2, 32, 10, 14)
    assert expected.std() > 0.1
    assert (ours - expected).abs().max().item() <= 1e-5


def _inverse(transformers_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """vislab names of a transformers VitDet state dict (the inverse of ``_transformers_names``)."""
    own = VisionTransformer(**TRUNK).state_dict()
    by_their_name = {their: ours for ours, their in zip(own, _transformers_names(own))}
    assert set(by_their_name) == set(transformers_state)
    return {by_their_name[k]: v for k, v in transformers_state.items()}


def test_activation_checkpointing_keeps_outputs_and_gradients():
    torch.manual_seed(0)
    plain = randomised(VisionTransformer(**TRUNK)).train()
    checkpointed = VisionTransformer(**TRUNK).train()
    checkpointed.load_state_dict(plain.state_dict())
    assert len(wrap_blocks(checkpointed, activation_checkpointing=True, compile_blocks=False)) == TRUNK["depth"]
    x = torch.randn(1, 3, 128, 128)
    outputs = [m.forward_features(x)["last"] for m in (plain, checkpointed)]
    torch.testing.assert_close(outputs[0], outputs[1])
    for out in outputs:
        out.square().sum().backward()
    torch.testing.assert_close(plain.blocks[0].attn.qkv.weight.grad, checkpointed.blocks[0].attn.qkv.weight.grad)


def test_layer_decay_numbers_blocks_and_gives_the_neck_full_lr():
    model = vislab.create_model("mask_rcnn_vitdet_b", num_classes=3, embed_dim=32, depth=4, num_heads=2,
                                img_size=128, window_size=4, residual_blocks=(1,), neck_channels=16,
                                head_conv_dim=16, head_fc_dim=32)
    assert model.num_lr_layers == 5
    assert model.lr_layer_id("backbone.pos_embed") == model.lr_layer_id("backbone.patch_embed.weight") == 0
    assert model.lr_layer_id("backbone.blocks.2.attn.qkv.weight") == 3
    assert model.lr_layer_id("backbone.blocks.1.residual.conv1.weight") == 5  # detectron2: not a block layer
    assert model.lr_layer_id("fpn.levels.p2.lateral.0.weight") == model.lr_layer_id("rpn.head.deltas.weight") == 5
    groups = param_groups(model, weight_decay=0.1, decay_norm_and_bias=False, layer_decay=0.7)
    scales = {round(g["lr_scale"], 6) for g in groups}
    assert scales == {round(0.7**k, 6) for k in range(6)}


def test_simple_pyramid_levels_and_widths():
    shapes = {"last": ShapeSpec(channels=64, stride=16)}
    pyramid = SimpleFeaturePyramid(input_shapes=shapes, out_channels=32, norm="LN")
    assert {k: (s.channels, s.stride) for k, s in pyramid.output_shape().items()} == {
        "p2": (32, 4), "p3": (32, 8), "p4": (32, 16), "p5": (32, 32), "p6": (32, 64)}
    assert pyramid.levels["p2"]["resample"][3].out_channels == 16  # 64 -> 32 -> 16 channels
    outputs = pyramid({"last": torch.randn(2, 64, 6, 10)})
    assert [tuple(o.shape[-2:]) for o in outputs.values()] == [(24, 40), (12, 20), (6, 10), (3, 5), (2, 3)]
    assert all(o.shape[:2] == (2, 32) for o in outputs.values())


def test_multiscale_adaptor_reads_quarter_blocks_into_an_fpn():
    assert quarter_blocks(12) == (2, 5, 8, 11) and quarter_blocks(24) == (5, 11, 17, 23)
    assert quarter_blocks(32) == (7, 15, 23, 31)
    names = [f"block{i}" for i in quarter_blocks(12)]
    shapes = {name: ShapeSpec(channels=64, stride=16) for name in names}
    neck = ViTAdaptorFPN(input_shapes=shapes, in_features=names, out_channels=32, adaptor_norm="GN")
    features = {name: torch.randn(1, 64, 4, 6) for name in names}
    outputs = neck(features)
    assert [(k, tuple(v.shape)) for k, v in outputs.items()] == [
        ("p2", (1, 32, 16, 24)), ("p3", (1, 32, 8, 12)), ("p4", (1, 32, 4, 6)), ("p5", (1, 32, 2, 3)),
        ("p6", (1, 32, 1, 2))]
    assert neck.resamplers["block2"][3].out_channels == 64  # Li et al. keep the ViT's width


@pytest.mark.parametrize("source", ["vit_s16", "mae_vit_tiny_p4"])
def test_pretrained_vit_initialises_the_trunk_with_positions_resized(tmp_path, source):
    """A classifier's or MAE's encoder loads into the detection trunk: class token and final norm
    dropped, the position table resized to the trunk's 14x14 (+ class slot) grid, relative
    positions left at zero."""
    options = {"vit_s16": dict(embed_dim=32, depth=4, num_heads=2, img_size=64, patch_size=16),
               "mae_vit_tiny_p4": dict(embed_dim=32, depth=4, num_heads=2, img_size=32, patch_size=16)}[source]
    torch.manual_seed(0)
    pretrained = vislab.create_model(source, num_classes=10, **options) if source == "vit_s16" else \
        vislab.create_model(source, **options)
    path = tmp_path / "pretrained.safetensors"
    save_weights(pretrained.state_dict(), path)
    detector = vislab.create_model("mask_rcnn_vitdet_b", num_classes=3, embed_dim=32, depth=4, num_heads=2,
                                   img_size=128, window_size=4, neck_channels=16, head_conv_dim=16, head_fc_dim=32)
    assert load_backbone_weights(detector, path).ok
    trunk, source_trunk = detector.backbone, pretrained.backbone
    torch.testing.assert_close(trunk.blocks[3].mlp.fc2.weight, source_trunk.blocks[3].mlp.fc2.weight)
    torch.testing.assert_close(trunk.pos_embed[:, 0], source_trunk.pos_embed[:, 0])  # class slot kept
    side = source_trunk.grid_size[0]
    grid = source_trunk.pos_embed[:, 1:].reshape(1, side, side, -1).permute(0, 3, 1, 2)
    expected = F.interpolate(grid, size=(14, 14), mode="bicubic", align_corners=False)
    torch.testing.assert_close(trunk.pos_embed[:, 1:], expected.flatten(2).transpose(1, 2))
    assert not any(b.attn.rel_pos_h.any() for b in trunk.blocks)


def test_pretrained_vit_of_another_depth_is_an_error(tmp_path):
    pretrained = vislab.create_model("vit_s16", num_classes=10, embed_dim=32, depth=6, num_heads=2, img_size=64)
    path = tmp_path / "deeper.safetensors"
    save_weights(pretrained.state_dict(), path)
    detector = vislab.create_model("mask_rcnn_vitdet_b", num_classes=3, embed_dim=32, depth=4, num_heads=2,
                                   img_size=128, window_size=4, neck_channels=16, head_conv_dim=16, head_fc_dim=32)
    with pytest.raises(vislab.weights.WeightsError, match="blocks.5"):
        load_backbone_weights(detector, path)


def test_vitdet_pads_to_its_square_input_and_refuses_larger_images():
    model = vislab.create_model("mask_rcnn_vitdet_b", num_classes=3, embed_dim=32, depth=2, num_heads=2,
                                img_size=64, window_size=2, global_blocks=(1,), neck_channels=16,
                                head_conv_dim=16, head_fc_dim=32).eval()
    with torch.no_grad():
        detections = model(torch.randn(1, 3, 32, 48), [(30, 45)])
    assert detections[0]["boxes"].numel() == 0 or detections[0]["boxes"][:, 2].max() <= 45
    with pytest.raises(ValueError, match="64-pixel square"):
        model(torch.randn(1, 3, 96, 64), [(96, 64)])
