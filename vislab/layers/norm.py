"""Normalisation layers chosen by name.

Every model asks ``get_norm(name, channels)`` for its norms, so a whole network switches between
BatchNorm, SyncBatchNorm, frozen BatchNorm, GroupNorm (Wu & He, 2018), channels-first
LayerNorm and InstanceNorm with one argument (the pattern of detectron2's ``get_norm``).
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

NORM_NAMES = ("BN", "SyncBN", "FrozenBN", "GN", "LN", "IN", "none")


class FrozenBatchNorm2d(nn.Module):
    """BatchNorm2d with fixed statistics and affine parameters, stored as buffers.

    Used when fine-tuning detectors from classification weights with small per-device batches,
    where batch statistics would be too noisy (Mask R-CNN; "Rethinking ImageNet Pre-training",
    section 3). It computes ``(x - mean) / sqrt(var + eps) * weight + bias`` exactly as
    ``nn.BatchNorm2d`` does in eval mode.
    """

    def __init__(self, num_features: int, *, eps: float = 1e-5):
        super().__init__()
        self.num_features = num_features
        self.eps = eps
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.weight * torch.rsqrt(self.running_var + self.eps)
        shift = self.bias - self.running_mean * scale
        shape = (1, -1) + (1,) * (x.dim() - 2)  # (N, C, H, W), or (N, C, T, H, W) for video
        # one fused pass over x (a multiply then an add would read and write it twice)
        return torch.addcmul(shift.view(shape).to(x.dtype), x, scale.view(shape).to(x.dtype))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # BatchNorm checkpoints carry a step counter that frozen statistics do not need.
        state_dict.pop(prefix + "num_batches_tracked", None)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}"

    @classmethod
    def convert(cls, module: nn.Module) -> nn.Module:
        """Return ``module`` with every BatchNorm replaced by a frozen copy of its statistics."""
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            reference = module.running_mean if module.track_running_stats else module.weight
            frozen = cls(module.num_features, eps=module.eps).to(device=reference.device, dtype=reference.dtype)
            if module.affine:
                frozen.weight.copy_(module.weight.detach())
                frozen.bias.copy_(module.bias.detach())
            if module.track_running_stats:
                frozen.running_mean.copy_(module.running_mean)
                frozen.running_var.copy_(module.running_var)
            return frozen
        for name, child in module.named_children():
            converted = cls.convert(child)
            if converted is not child:
                setattr(module, name, converted)
        return module


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channel dimension of an ``(N, C, H, W)`` map (ConvNeXt, ViTDet)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


def get_norm(name: str | None, num_channels: int, *, groups: int = 32, dims: int = 2) -> nn.Module:
    """Build the norm layer called ``name`` for ``num_channels`` channels.

    ``groups`` is GroupNorm's group count (32 in the GN paper, section 3.1); a channel count it
    does not divide is an error rather than a silent fallback. ``dims=3`` builds the norm for
    ``(N, C, T, H, W)`` video features (BatchNorm3d); LN is channels-first 2-D only.
    """
    if dims not in (2, 3):
        raise ValueError(f"norm dims must be 2 or 3, got {dims}")
    if name is None or name == "none":
        return nn.Identity()
    if name == "BN":
        return nn.BatchNorm2d(num_channels) if dims == 2 else nn.BatchNorm3d(num_channels)
    if name == "SyncBN":
        return nn.SyncBatchNorm(num_channels)
    if name == "FrozenBN":
        return FrozenBatchNorm2d(num_channels)
    if name == "GN":
        if groups <= 0 or num_channels % groups != 0:
            raise ValueError(
                f"norm=GN with {groups} groups cannot split {num_channels} channels: "
                f"choose norm_groups dividing every channel count of the model"
            )
        return nn.GroupNorm(groups, num_channels)
    if name == "LN":
        if dims != 2:
            raise ValueError(f"norm=LN is channels-first LayerNorm of 2-D maps; it has no {dims}-D form")
        return LayerNorm2d(num_channels, eps=1e-6)
    if name == "IN":
        # Instance Norm is GroupNorm with one channel per group (GN paper, section 3.1, figure 2)
        return nn.GroupNorm(num_channels, num_channels)
    raise ValueError(f"unknown norm {name!r}; choose one of {', '.join(NORM_NAMES)}")
