"""Registry entries for MAE pre-training models (He et al., 2022): a ViT encoder with MAE's
fixed sine-cosine position embedding plus the masked-autoencoder decoder.

The ViT-B/L/H entries are facebookresearch/mae's ``mae_vit_*_dec512d8b`` (decoder 512 wide, 8
blocks, 16 heads) with the normalised-pixel target its pre-training recipes use;
``mae_vit_tiny_p4`` is a 32x32, patch-4 model small enough to pre-train on the digits on a CPU;
``mae_vit_tiny_p8`` pre-trains the trunk of the small ViTDet on the shapes images.
The MAE paper publishes no parameter or FLOP counts of these models, so they carry no reference.
"""
from __future__ import annotations

from functools import partial

from vislab.models.backbones.vit import VisionTransformer
from vislab.models.registry_types import ModelEntry
from vislab.ssl.mae import MaskedAutoencoder


def mae_vit(*, num_classes: int | None = None, patch_size: int, embed_dim: int, depth: int, num_heads: int,
            img_size: int = 224, in_chans: int = 3, decoder_dim: int = 512, decoder_depth: int = 8,
            decoder_heads: int = 16, mask_ratio: float = 0.75, norm_pix_loss: bool = False) -> MaskedAutoencoder:
    """A ``MaskedAutoencoder`` around a class-token ViT with a sine-cosine position embedding.
    ``num_classes`` is accepted (the registry passes it) and ignored: the model has no classifier."""
    encoder = VisionTransformer(patch_size=patch_size, embed_dim=embed_dim, depth=depth, num_heads=num_heads,
                                pos_embed="sincos", img_size=img_size, in_chans=in_chans)
    return MaskedAutoencoder(encoder=encoder, decoder_dim=decoder_dim, decoder_depth=decoder_depth,
                             decoder_heads=decoder_heads, mask_ratio=mask_ratio, norm_pix_loss=norm_pix_loss)


_entry = partial(ModelEntry, task="pretrain", family="mae", builder=mae_vit, num_classes=0, reference=None)

ENTRIES = (
    _entry(name="mae_vit_b16", defaults=dict(patch_size=16, embed_dim=768, depth=12, num_heads=12,
                                             norm_pix_loss=True)),
    _entry(name="mae_vit_l16", defaults=dict(patch_size=16, embed_dim=1024, depth=24, num_heads=16,
                                             norm_pix_loss=True)),
    _entry(name="mae_vit_h14", defaults=dict(patch_size=14, embed_dim=1280, depth=32, num_heads=16,
                                             norm_pix_loss=True)),
    _entry(name="mae_vit_tiny_p4", input_size=(3, 32, 32),
           defaults=dict(img_size=32, patch_size=4, embed_dim=192, depth=6, num_heads=3,
                         decoder_dim=128, decoder_depth=2, decoder_heads=4)),
    # the encoder of mask_rcnn_vitdet_tiny_p8, pre-trained on the shapes set's images
    _entry(name="mae_vit_tiny_p8", input_size=(3, 160, 160),
           defaults=dict(img_size=160, patch_size=8, embed_dim=192, depth=6, num_heads=3,
                         decoder_dim=128, decoder_depth=2, decoder_heads=4, norm_pix_loss=True)),
)
