"""MAE: masking, loss, targets, decoder position embedding, reconstruction, conversion of the
official layout (vislab/ssl/mae.py, vislab/convert/mae.py) and the reconstruction grid."""
from __future__ import annotations

import math
from functools import partial

import pytest
import torch
from PIL import Image
from timm.layers import PatchEmbed
from timm.models.vision_transformer import Block
from torch import nn

import vislab
from vislab.convert import convert_file, convert_state_dict
from vislab.models.zoo.mae import mae_vit
from vislab.ssl.mae import MaskedAutoencoder, patchify, random_masking
from vislab.ssl.reconstruction_grid import save_reconstruction_grid
from vislab.weights import load_backbone_weights, load_weights, read_weights

TINY = dict(img_size=16, patch_size=4, embed_dim=32, depth=2, num_heads=2, decoder_dim=16, decoder_depth=2,
            decoder_heads=2)
TINY_VIT = {"patch_size": 4, "embed_dim": 32, "depth": 2, "num_heads": 2, "img_size": 16}


def tiny_mae(**overrides) -> MaskedAutoencoder:
    torch.manual_seed(0)
    return mae_vit(**{**TINY, **overrides})


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# Masking


def test_random_masking_keeps_the_first_fraction_of_a_per_sample_shuffle():
    tokens = torch.arange(3 * 20 * 2, dtype=torch.float32).reshape(3, 20, 2)
    kept, mask, ids_restore = random_masking(tokens, mask_ratio=0.75, generator=seeded())
    assert kept.shape == (3, 5, 2) and mask.shape == (3, 20)
    for sample in range(3):
        assert sorted(ids_restore[sample].tolist()) == list(range(20))
        shuffle = ids_restore[sample].argsort()
        assert torch.equal(kept[sample], tokens[sample, shuffle[:5]])
        assert set(shuffle[:5].tolist()) == set(torch.nonzero(mask[sample] == 0).flatten().tolist())
    assert mask.sum(dim=1).tolist() == [15, 15, 15]
    assert not torch.equal(mask[0], mask[1])  # one mask per sample
    removed = torch.zeros(3, 15, 2)
    restored = torch.cat([kept, removed], dim=1).gather(1, ids_restore[..., None].expand(-1, -1, 2))
    assert torch.equal(restored * (1 - mask[..., None]), tokens * (1 - mask[..., None]))
    kept_again, _, _ = random_masking(tokens, mask_ratio=0.75, generator=seeded())
    assert torch.equal(kept, kept_again)


def test_kept_count_truncates_as_mae():
    kept, mask, _ = random_masking(torch.zeros(2, 10, 3), mask_ratio=0.75)
    assert kept.shape[1] == int(10 * 0.25) == 2 and mask.sum().item() == 16


@pytest.mark.parametrize("ratio", [-0.1, 1.0])
def test_bad_mask_ratio_raises(ratio):
    with pytest.raises(ValueError, match="mask_ratio"):
        random_masking(torch.zeros(1, 4, 2), mask_ratio=ratio)
    with pytest.raises(ValueError, match="mask_ratio"):
        tiny_mae(mask_ratio=ratio)


# Loss and target


def test_loss_counts_removed_patches_only():
    model = tiny_mae()
    images = torch.randn(2, 3, 16, 16)
    pred = torch.randn(2, 16, 48)
    _, mask, _ = random_masking(torch.zeros(2, 16, 1), mask_ratio=0.75, generator=seeded())
    loss = model.reconstruction_loss(images, pred, mask)
    per_patch = (pred - patchify(images, patch_size=4)).pow(2).mean(dim=-1)
    assert torch.allclose(loss, per_patch[mask.bool()].mean())
    visible_changed = pred + 5 * (1 - mask)[..., None]
    assert torch.equal(model.reconstruction_loss(images, visible_changed, mask), loss)
    removed_index = torch.nonzero(mask[0]).flatten()[0]
    removed_changed = pred.clone()
    removed_changed[0, removed_index] += 5
    assert model.reconstruction_loss(images, removed_changed, mask) > loss + 1


def test_patch_target_order_and_norm_pix_formula():
    images = torch.randn(2, 3, 16, 16)
    row, col, p = 2, 1, 4
    pixels = images[1, :, row * p:(row + 1) * p, col * p:(col + 1) * p].permute(1, 2, 0).flatten()
    assert torch.equal(tiny_mae().reconstruction_target(images)[1, row * 4 + col], pixels)
    mean = pixels.sum() / pixels.numel()
    unbiased_var = ((pixels - mean) ** 2).sum() / (pixels.numel() - 1)
    expected = (pixels - mean) / (unbiased_var + 1e-6) ** 0.5
    target = tiny_mae(norm_pix_loss=True).reconstruction_target(images)[1, row * 4 + col]
    assert torch.allclose(target, expected, atol=1e-6)


def test_decoder_position_embedding_is_mae_sincos_with_zero_class_row():
    pos = tiny_mae(decoder_dim=16).decoder_pos_embed[0]  # 4x4 grid; 16 = 4 quarters of 4 channels
    assert pos.shape == (17, 16) and not pos[0].any()
    quarter = 4
    for row, col in [(0, 3), (2, 1), (3, 3)]:
        token = pos[1 + row * 4 + col]
        for i in range(quarter):
            omega = 1 / 10000 ** (2 * i / (2 * quarter))
            expected = [math.sin(col * omega), math.cos(col * omega), math.sin(row * omega), math.cos(row * omega)]
            actual = [token[i], token[quarter + i], token[2 * quarter + i], token[3 * quarter + i]]
            assert torch.allclose(torch.tensor(actual), torch.tensor(expected), atol=1e-6)
    assert "decoder_pos_embed" not in dict(tiny_mae().named_parameters())


# The model


def test_tiny_registry_model_trains_encoder_on_visible_tokens_only():
    torch.manual_seed(0)
    model = vislab.create_model("mae_vit_tiny_p4")
    assert "mae_vit_tiny_p4" in vislab.list_models(task="pretrain") and model.views_per_image == 1
    lengths = []
    model.backbone.blocks[0].register_forward_hook(lambda module, args, out: lengths.append(out.shape[1]))
    out = model(torch.randn(2, 3, 32, 32))
    assert lengths == [1 + 16]  # class token + 25% of the 8x8 patches
    assert out["pred"].shape == (2, 64, 48) and out["mask"].sum(dim=1).tolist() == [48, 48]
    out["loss"].backward()
    for name in ("mask_token", "backbone.patch_embed.weight", "backbone.cls_token", "decoder_pred.weight",
                 "backbone.blocks.5.mlp.fc2.weight", "decoder_blocks.1.attn.qkv.weight"):
        assert model.get_parameter(name).grad.abs().sum() > 0, name
    assert model.no_weight_decay() == {"mask_token", "backbone.cls_token"}


@pytest.mark.parametrize("norm_pix_loss", [False, True])
def test_reconstruction_keeps_visible_patches_and_fills_removed_ones(norm_pix_loss):
    model = tiny_mae(norm_pix_loss=norm_pix_loss).eval()
    images = torch.randn(2, 3, 16, 16)
    out = model(images, generator=seeded(3))
    shown = model.reconstruct(images, generator=seeded(3))
    assert shown["masked"].shape == shown["reconstruction"].shape == images.shape
    visible = (1 - out["mask"]).bool()
    source, rebuilt, masked = (patchify(x, patch_size=4) for x in (images, shown["reconstruction"], shown["masked"]))
    assert torch.equal(rebuilt[visible], source[visible]) and torch.equal(masked[visible], source[visible])
    assert not masked[~visible].any()
    pred = out["pred"][~visible]
    if norm_pix_loss:
        patches = source[~visible]
        pred = pred * (patches.var(dim=-1, keepdim=True) + 1e-6) ** 0.5 + patches.mean(dim=-1, keepdim=True)
    assert torch.allclose(rebuilt[~visible], pred, atol=1e-5)


# Conversion of facebookresearch/mae checkpoints


class OfficialMae(nn.Module):
    """facebookresearch/mae ``models_mae.MaskedAutoencoderViT``: its parameter names and its
    forward (random masking, loss), built from timm's blocks as the official code is."""

    def __init__(self, *, img_size, patch_size, embed_dim, depth, num_heads, decoder_dim, decoder_depth,
                 decoder_heads, norm_pix_loss):
        super().__init__()
        norm = partial(nn.LayerNorm, eps=1e-6)
        self.patch_size, self.norm_pix_loss = patch_size, norm_pix_loss
        self.patch_embed = PatchEmbed(img_size, patch_size, 3, embed_dim)
        num_patches = self.patch_embed.num_patches
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + 1, embed_dim), requires_grad=False)
        self.blocks = nn.ModuleList([Block(embed_dim, num_heads, 4.0, qkv_bias=True, norm_layer=norm)
                                     for _ in range(depth)])
        self.norm = norm(embed_dim)
        self.decoder_embed = nn.Linear(embed_dim, decoder_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_dim))
        self.decoder_pos_embed = nn.Parameter(torch.zeros(1, num_patches + 1, decoder_dim), requires_grad=False)
        self.decoder_blocks = nn.ModuleList([Block(decoder_dim, decoder_heads, 4.0, qkv_bias=True, norm_layer=norm)
                                             for _ in range(decoder_depth)])
        self.decoder_norm = norm(decoder_dim)
        self.decoder_pred = nn.Linear(decoder_dim, patch_size**2 * 3)

    def forward(self, imgs, generator):
        x = self.patch_embed(imgs) + self.pos_embed[:, 1:, :]
        n, length, dim = x.shape
        len_keep = int(length * (1 - 0.75))
        ids_shuffle = torch.argsort(torch.rand(n, length, generator=generator), dim=1)
        ids_restore = torch.argsort(ids_shuffle, dim=1)
        x = torch.gather(x, dim=1, index=ids_shuffle[:, :len_keep].unsqueeze(-1).repeat(1, 1, dim))
        mask = torch.ones([n, length])
        mask[:, :len_keep] = 0
        mask = torch.gather(mask, dim=1, index=ids_restore)
        x = torch.cat(((self.cls_token + self.pos_embed[:, :1, :]).expand(n, -1, -1), x), dim=1)
        for blk in self.blocks:
            x = blk(x)
        x = self.decoder_embed(self.norm(x))
        mask_tokens = self.mask_token.repeat(n, ids_restore.shape[1] + 1 - x.shape[1], 1)
        x_ = torch.cat([x[:, 1:, :], mask_tokens], dim=1)
        x_ = torch.gather(x_, dim=1, index=ids_restore.unsqueeze(-1).repeat(1, 1, x.shape[2]))
        x = torch.cat([x[:, :1, :], x_], dim=1) + self.decoder_pos_embed
        for blk in self.decoder_blocks:
            x = blk(x)
        pred = self.decoder_pred(self.decoder_norm(x))[:, 1:, :]
        p, h = self.patch_size, imgs.shape[2] // self.patch_size
        target = torch.einsum("nchpwq->nhwpqc", imgs.reshape(n, 3, h, p, h, p)).reshape(n, h * h, p**2 * 3)
        if self.norm_pix_loss:
            mean, var = target.mean(dim=-1, keepdim=True), target.var(dim=-1, keepdim=True)
            target = (target - mean) / (var + 1.e-6) ** .5
        loss = ((pred - target) ** 2).mean(dim=-1)
        return (loss * mask).sum() / mask.sum(), pred, mask


def official_checkpoint(**overrides) -> tuple[OfficialMae, dict]:
    """An official-layout MAE with every parameter and buffer random, and its ``{"model": ...}``."""
    torch.manual_seed(1)
    reference = OfficialMae(**{**TINY, "norm_pix_loss": True, **overrides}).eval()
    with torch.no_grad():
        for tensor in reference.state_dict().values():
            tensor.copy_(torch.randn_like(tensor) * 0.3)
    return reference, {"model": reference.state_dict()}


OFFICIAL_KEYS = ("patch_embed.proj.weight", "cls_token", "pos_embed", "blocks.1.attn.qkv.weight", "norm.bias",
                 "mask_token", "decoder_embed.weight", "decoder_pos_embed", "decoder_blocks.0.mlp.fc2.weight",
                 "decoder_norm.weight", "decoder_pred.bias")


def vislab_key(official_key: str) -> str:
    if official_key.startswith(("mask_token", "decoder_")):
        return official_key
    return "backbone." + official_key.replace("patch_embed.proj.", "patch_embed.")


def test_official_checkpoint_converts_and_matches_official_forward(tmp_path):
    reference, checkpoint = official_checkpoint()
    assert set(OFFICIAL_KEYS) <= set(checkpoint["model"])
    src, dst = tmp_path / "mae_official.pth", tmp_path / "mae.safetensors"
    torch.save(checkpoint, src)
    convert_file(source="mae", model_name="mae_vit_tiny_p4", src=src, dst=dst, options=TINY)
    converted, metadata = read_weights(dst)
    assert metadata["model"] == "mae_vit_tiny_p4" and metadata["num_classes"] is None
    assert len(converted) == len(checkpoint["model"])
    for key, value in checkpoint["model"].items():
        assert torch.equal(converted[vislab_key(key)], value), key

    model = vislab.create_model("mae_vit_tiny_p4", **TINY, norm_pix_loss=True).eval()
    load_weights(model, dst)
    images = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        loss, pred, mask = reference(images, seeded(5))
        out = model(images, generator=seeded(5))
    assert torch.equal(out["mask"], mask)
    assert pred.std() > 0.1
    assert torch.allclose(out["pred"], pred, atol=1e-4) and torch.allclose(out["loss"], loss, atol=1e-4)


def test_official_pretrained_encoder_converts_to_a_vit_backbone(tmp_path):
    _, checkpoint = official_checkpoint()
    src, dst = tmp_path / "mae_official.pth", tmp_path / "vit.safetensors"
    torch.save(checkpoint, src)
    assert "no classifier" in convert_file(source="mae", model_name="vit_s16", src=src, dst=dst, options=TINY_VIT)
    converted, metadata = read_weights(dst)
    assert metadata["num_classes"] is None
    assert not [key for key in converted if not key.startswith("backbone.")]
    assert torch.equal(converted["backbone.blocks.1.attn.qkv.weight"], checkpoint["model"]["blocks.1.attn.qkv.weight"])
    classifier = vislab.create_model("vit_s16", num_classes=10, **TINY_VIT)
    load_backbone_weights(classifier, dst)
    assert torch.equal(classifier.backbone.patch_embed.weight, checkpoint["model"]["patch_embed.proj.weight"])


def test_official_finetuned_checkpoint_converts_to_an_avg_pool_classifier():
    _, checkpoint = official_checkpoint()
    encoder = {k: v for k, v in checkpoint["model"].items() if not k.startswith(("mask_token", "decoder_", "norm."))}
    finetuned = {**encoder, "fc_norm.weight": torch.randn(32), "fc_norm.bias": torch.randn(32),
                 "head.weight": torch.randn(7, 32), "head.bias": torch.randn(7)}
    _, model = convert_state_dict(source="mae", model_name="vit_s16", state_dict=finetuned,
                                  options={**TINY_VIT, "global_pool": "avg"})
    assert model.num_classes == 7
    assert torch.equal(model.backbone.norm.weight, finetuned["fc_norm.weight"])
    assert torch.equal(model.head.fc.weight, finetuned["head.weight"])


def test_mae_backbone_weights_load_strictly_into_a_vit_classifier():
    backbone_state = {k: v for k, v in tiny_mae().state_dict().items() if k.startswith("backbone.")}
    classifier = vislab.create_model("vit_s16", num_classes=3, **TINY_VIT)
    missing = set(classifier.state_dict()) - set(backbone_state)
    assert missing == {"head.fc.weight", "head.fc.bias"}
    classifier.load_state_dict(backbone_state, strict=False)


# Reconstruction grid


def test_grid_png_has_three_rows_of_unnormalised_images(tmp_path):
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.2, 0.2)
    originals = torch.zeros(10, 3, 8, 8)
    originals[0, :, 0, 0] = torch.tensor([1.0, -1.0, 0.5])
    path = tmp_path / "grid" / "reconstructions.png"
    save_reconstruction_grid(path, originals=originals, masked=torch.zeros_like(originals),
                             reconstructions=torch.full_like(originals, 10.0), mean=mean, std=std, max_images=4)
    image = Image.open(path).convert("RGB")
    assert image.size == (2 + 4 * (8 + 2), 2 + 3 * (8 + 2))
    expected = [255 * v for v in (1.0 * 0.2 + 0.5, -1.0 * 0.2 + 0.4, 0.5 * 0.2 + 0.3)]  # value * std + mean
    assert all(abs(got - want) <= 1 for got, want in zip(image.getpixel((2, 2)), expected))
    assert image.getpixel((2, 2 + 2 * 10)) == (255, 255, 255)  # clipped to 1
    assert [p.name for p in path.parent.iterdir()] == ["reconstructions.png"]
    with pytest.raises(ValueError, match="one shape"):
        save_reconstruction_grid(path, originals=originals, masked=originals[:2], reconstructions=originals,
                                 mean=mean, std=std)
