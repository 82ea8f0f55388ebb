"""Masked autoencoder (He et al., 2022, "Masked Autoencoders Are Scalable Vision Learners").

A random 75% of the patches is removed; the ViT encoder runs on the visible ones only, a small
decoder sees the encoded visible tokens plus a shared mask token at every removed position, and
predicts the removed patches' pixels (MAE section 3). The layout and initialisation follow
facebookresearch/mae ``models_mae.py``, so its checkpoints load by renaming the encoder keys
(``vislab.convert.mae``); the encoder is a vislab ``VisionTransformer`` kept as ``backbone``, so
the ``backbone.*`` weights load unchanged into a ViT classifier or detector.
"""
from __future__ import annotations

import torch
from torch import nn

from vislab.layers.pos_embed import resize_grid_position_embedding, sincos_2d_position_embedding
from vislab.models.backbones.vit import LAYER_NORM_EPS, TransformerBlock, VisionTransformer

NORM_PIX_EPS = 1e-6
DECODER_MLP_RATIO = 4.0


def random_masking(tokens: torch.Tensor, *, mask_ratio: float, generator: torch.Generator | None = None,
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-sample random masking (MAE section 3, "Masking"): each token gets uniform noise, the
    ``L * (1 - mask_ratio)`` tokens with the smallest noise are kept in that (shuffled) order.

    Args:
        tokens: ``(N, L, C)``.
    Returns:
        ``kept`` ``(N, L_keep, C)``; ``mask`` ``(N, L)`` float32, 1 where a token was removed;
        ``ids_restore`` ``(N, L)``, the position of each original token in the shuffled order,
        so ``cat([kept, removed]).gather(1, ids_restore)`` restores the original order.
    """
    if not 0.0 <= mask_ratio < 1.0:
        raise ValueError(f"mask_ratio must be in [0, 1), got {mask_ratio}")
    batch, length, channels = tokens.shape
    num_kept = int(length * (1 - mask_ratio))
    noise = torch.rand(batch, length, device=tokens.device, generator=generator)
    ids_shuffle = noise.argsort(dim=1)
    ids_restore = ids_shuffle.argsort(dim=1)
    kept = tokens.gather(1, ids_shuffle[:, :num_kept, None].expand(-1, -1, channels))
    mask = (ids_restore >= num_kept).float()
    return kept, mask, ids_restore


def patchify(images: torch.Tensor, *, patch_size: int) -> torch.Tensor:
    """``(N, C, H, W)`` -> ``(N, h * w, p * p * C)``: row-major patches, each flattened in
    (row, column, channel) order as MAE's ``patchify``."""
    batch, channels, height, width = images.shape
    rows, cols = height // patch_size, width // patch_size
    patches = images.reshape(batch, channels, rows, patch_size, cols, patch_size)
    return patches.permute(0, 2, 4, 3, 5, 1).reshape(batch, rows * cols, patch_size**2 * channels)


def unpatchify(patches: torch.Tensor, *, patch_size: int, grid: tuple[int, int]) -> torch.Tensor:
    """The inverse of ``patchify`` for a ``grid`` of ``(rows, cols)`` patches."""
    batch = patches.shape[0]
    rows, cols = grid
    channels = patches.shape[-1] // patch_size**2
    images = patches.reshape(batch, rows, cols, patch_size, patch_size, channels)
    return images.permute(0, 5, 1, 3, 2, 4).reshape(batch, channels, rows * patch_size, cols * patch_size)


class MaskedAutoencoder(nn.Module):
    """MAE around a vislab ViT ``encoder`` (stored as ``backbone``).

    Args:
        encoder: the ViT to pre-train; MAE uses ``pos_embed="sincos"`` (section 3, "Encoder").
        decoder_dim, decoder_depth, decoder_heads: the decoder transformer (section 3, "Decoder";
            512 wide, 8 blocks, 16 heads by default, Table 1(a, b)).
        mask_ratio: the fraction of patches removed (75% by default, Figure 5).
        norm_pix_loss: predict each patch's pixels normalised by that patch's mean and standard
            deviation (section 3, "Reconstruction target"; Table 1(d)).
    """

    views_per_image = 1

    def __init__(self, *, encoder: VisionTransformer, decoder_dim: int = 512, decoder_depth: int = 8,
                 decoder_heads: int = 16, mask_ratio: float = 0.75, norm_pix_loss: bool = False):
        super().__init__()
        if not 0.0 < mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must be in (0, 1): some patches must be removed, got {mask_ratio}")
        self.backbone = encoder
        self.patch_size = encoder.patch_size
        self.mask_ratio = mask_ratio
        self.norm_pix_loss = norm_pix_loss
        in_chans = encoder.patch_embed.in_channels

        self.decoder_embed = nn.Linear(encoder.embed_dim, decoder_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_dim))
        grid = sincos_2d_position_embedding(embed_dim=decoder_dim, grid_size=encoder.grid_size)
        prefix = torch.zeros(encoder.num_prefix_tokens, decoder_dim)
        self.register_buffer("decoder_pos_embed", torch.cat([prefix, grid])[None])
        self.decoder_blocks = nn.Sequential(*[
            TransformerBlock(decoder_dim, num_heads=decoder_heads, mlp_ratio=DECODER_MLP_RATIO, qkv_bias=True,
                             layer_scale_init=None, drop_path=0.0)
            for _ in range(decoder_depth)
        ])
        self.decoder_norm = nn.LayerNorm(decoder_dim, eps=LAYER_NORM_EPS)
        self.decoder_pred = nn.Linear(decoder_dim, self.patch_size**2 * in_chans)
        self._init_weights()

    def _init_weights(self) -> None:
        """MAE's ``initialize_weights`` over encoder and decoder: Xavier-uniform Linear weights
        (as the JAX ViT), zero biases; the patch embedding initialised as the Linear it is
        (Xavier over its flattened weight); normal(0.02) class and mask tokens; unit LayerNorms."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        patch_weight = self.backbone.patch_embed.weight
        nn.init.xavier_uniform_(patch_weight.view(patch_weight.shape[0], -1))
        if self.backbone.cls_token is not None:
            nn.init.normal_(self.backbone.cls_token, std=0.02)
        nn.init.normal_(self.mask_token, std=0.02)

    def no_weight_decay(self) -> set[str]:
        """The encoder's tokens and learned position embedding, and the mask token (the fixed
        sine-cosine embeddings are buffers, not parameters)."""
        return {"mask_token"} | {f"backbone.{name}" for name in self.backbone.no_weight_decay()}

    def encode(self, images: torch.Tensor, *, generator: torch.Generator | None = None,
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, tuple[int, int]]:
        """The encoder on the visible patches only (section 3, "MAE encoder"): the latent tokens
        (class token first) after the final norm, the mask, ``ids_restore`` and the patch grid."""
        encoder = self.backbone
        tokens, grid = encoder.embed_patches(images)
        tokens = encoder.add_position(tokens, grid)
        kept, mask, ids_restore = random_masking(tokens, mask_ratio=self.mask_ratio, generator=generator)
        latent = encoder.norm(encoder.blocks(encoder.prepend_class_token(kept)))
        return latent, mask, ids_restore, grid

    def decode(self, latent: torch.Tensor, ids_restore: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """The decoder on the full set: visible latents and a mask token at each removed position,
        back in image order, plus the decoder's sine-cosine position embedding (section 3, "MAE
        decoder"). Returns the predicted pixels ``(N, L, p * p * C)`` of every patch."""
        num_prefix = self.backbone.num_prefix_tokens
        tokens = self.decoder_embed(latent)
        batch, length = ids_restore.shape
        visible = tokens[:, num_prefix:]
        mask_tokens = self.mask_token.to(visible.dtype).expand(batch, length - visible.shape[1], -1)
        patches = torch.cat([visible, mask_tokens], dim=1)
        patches = patches.gather(1, ids_restore[..., None].expand(-1, -1, patches.shape[-1]))
        pos_embed = resize_grid_position_embedding(self.decoder_pos_embed, old_grid=self.backbone.grid_size,
                                                   new_grid=grid, num_prefix_tokens=num_prefix)
        tokens = torch.cat([tokens[:, :num_prefix], patches], dim=1) + pos_embed
        tokens = self.decoder_norm(self.decoder_blocks(tokens))
        return self.decoder_pred(tokens[:, num_prefix:])

    def reconstruction_target(self, images: torch.Tensor) -> torch.Tensor:
        """The patches' pixels, ``(N, L, p * p * C)``; with ``norm_pix_loss`` each patch is
        normalised by its own mean and unbiased variance, ``(x - mean) / sqrt(var + 1e-6)``."""
        target = patchify(images, patch_size=self.patch_size)
        if not self.norm_pix_loss:
            return target
        mean, var = target.mean(dim=-1, keepdim=True), target.var(dim=-1, keepdim=True)
        return (target - mean) / (var + NORM_PIX_EPS) ** 0.5

    def reconstruction_loss(self, images: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The mean squared error of each patch, averaged over the removed patches only (``mask``
        1; section 3, "Reconstruction target": "we compute the loss only on masked patches")."""
        per_patch = (pred - self.reconstruction_target(images)).pow(2).mean(dim=-1)
        return (per_patch * mask).sum() / mask.sum()

    def forward(self, images: torch.Tensor, *, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """``loss`` (``reconstruction_loss``), ``pred`` ``(N, L, p * p * C)`` and ``mask``
        ``(N, L)``; ``generator`` draws the masks (the global generator if None)."""
        latent, mask, ids_restore, grid = self.encode(images, generator=generator)
        pred = self.decode(latent, ids_restore, grid)
        return {"loss": self.reconstruction_loss(images, pred, mask), "pred": pred, "mask": mask}

    @torch.no_grad()
    def reconstruct(self, images: torch.Tensor, *, generator: torch.Generator | None = None,
                    ) -> dict[str, torch.Tensor]:
        """For display, both ``(N, C, H, W)`` in the input's (normalised) pixel space: ``masked``,
        the input with its removed patches zeroed, and ``reconstruction``, the visible patches
        from the input and the removed ones from the prediction (un-normalised with the input
        patch's own mean and variance when ``norm_pix_loss``)."""
        out = self(images, generator=generator)
        patches = patchify(images, patch_size=self.patch_size)
        pred = out["pred"].to(patches.dtype)
        if self.norm_pix_loss:
            mean, var = patches.mean(dim=-1, keepdim=True), patches.var(dim=-1, keepdim=True)
            pred = pred * (var + NORM_PIX_EPS) ** 0.5 + mean
        removed = out["mask"][..., None].to(patches.dtype)
        grid = (images.shape[-2] // self.patch_size, images.shape[-1] // self.patch_size)
        visible = patches * (1 - removed)
        return {"masked": unpatchify(visible, patch_size=self.patch_size, grid=grid),
                "reconstruction": unpatchify(visible + pred * removed, patch_size=self.patch_size, grid=grid)}
