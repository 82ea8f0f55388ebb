"""The invariance feature transform (Ye et al., 2021, "Exploiting Invariance in Training Deep Neural
Networks"), for convolutions and linear layers.

Two transforms act on what a layer sees, before its weights:

- **scale invariance from local statistics** (section 3.1): each input patch (a convolution's
  receptive field over all input channels, or a token's features) is divided by its own RMS, so
  a patch and a brighter or darker copy of it give the same response;
- **GL(n) invariance from batch statistics** (section 3.2): the patches are whitened with the
  inverse square root of their covariance over the batch, so gradient descent takes the same
  steps whatever basis the inputs come in. As in the first author's network deconvolution
  (Ye et al., 2020, ``FastDeconv``), the input channels are split into blocks of ``block``
  channels that share one covariance (of ``block x k x k`` features, the blocks' patches pooled as
  samples), the statistics come from patches at a spatial stride (``sampling_stride``), the
  inverse square root is found by coupled Newton-Schulz iterations (differentiated through), and
  the whitening is folded into the weights: ``W' = W C^(-1/2)`` and ``b' = b - W' mu``, so the
  layer still runs as one convolution. Running estimates of ``mu`` and ``C^(-1/2)`` serve
  evaluation, as BatchNorm's do.

Because the rescaling is per patch, it divides the layer's output at each position:
``y = conv(x, W') / rms(patch) + b'``.
"""
from __future__ import annotations

import contextlib

import torch
from torch import nn
from torch.nn import functional as F


def newton_schulz_isqrt(matrix: torch.Tensor, *, iterations: int) -> torch.Tensor:
    """``matrix^(-1/2)`` of a symmetric positive-definite matrix by coupled Newton-Schulz
    iterations (Higham, 2008, eq. 6.35): with ``Y0 = A / ||A||_F`` and ``Z0 = I``,
    ``T = (3I - Z Y) / 2``, ``Y <- Y T``, ``Z <- T Z``; ``Z`` tends to ``(A / ||A||_F)^(-1/2)``.
    Only matrix products, so it runs fast on accelerators and autograd differentiates it."""
    norm = torch.linalg.matrix_norm(matrix)
    identity = torch.eye(matrix.shape[-1], dtype=matrix.dtype, device=matrix.device)
    y, z = matrix / norm, identity
    for _ in range(iterations):
        t = 0.5 * (3.0 * identity - z @ y)
        y, z = y @ t, t @ z
    return z / norm.sqrt()


def _statistics_dtype(tensor: torch.Tensor) -> torch.dtype:
    """Covariances, inverse roots and folded weights in at least float32 (autocast is turned off
    around them)."""
    return torch.promote_types(tensor.dtype, torch.float32)


def _without_autocast(tensor: torch.Tensor) -> contextlib.AbstractContextManager:
    """Autocast turned off on the tensor's device (a meta tensor, when counting operations, has none)."""
    if tensor.device.type == "meta":
        return contextlib.nullcontext()
    return torch.autocast(device_type=tensor.device.type, enabled=False)


def fold_whitening(weight: torch.Tensor, bias: torch.Tensor | None, mean: torch.Tensor,
                   whitening: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``W' = W C^(-1/2)`` per block and ``b' = b - W' mu`` for a weight viewed as
    (out, blocks, features per block); returns W' in that view and b'."""
    with _without_autocast(weight):
        folded = weight.to(whitening.dtype) @ whitening
        folded_bias = -(folded @ mean).sum(1)
        if bias is not None:
            folded_bias = folded_bias + bias.to(folded_bias.dtype)
    return folded, folded_bias


class _EvalFold:
    """The folded weight and bias of an evaluation forward without gradients, computed once and
    kept while the tensors they come from are unchanged (same storage, same version counter: an
    optimizer step, a loaded state dict or a move to another device makes them stale). Evaluation
    then costs what the plain layer costs, as when the transform is folded for deployment."""

    def __init__(self):
        self.key: tuple | None = None
        self.value: tuple[torch.Tensor, torch.Tensor] | None = None

    def get(self, sources: tuple[torch.Tensor | None, ...], fold) -> tuple[torch.Tensor, torch.Tensor]:
        if torch.is_grad_enabled():
            return fold()
        key = tuple((t.data_ptr(), t._version, t.dtype) if t is not None else None for t in sources)
        if key != self.key:
            self.key, self.value = key, fold()
        return self.value


class _WhiteningStatistics(nn.Module):
    """Batch whitening of ``num_features``-long samples: the mean and ``C^(-1/2)`` of a training
    batch (and their running averages), or the running ones in evaluation."""

    def __init__(self, num_features: int, *, iterations: int, eps: float, momentum: float):
        super().__init__()
        self.iterations, self.eps, self.momentum = iterations, eps, momentum
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_whitening", torch.eye(num_features))

    def statistics(self, samples: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.training:
            return self.running_mean, self.running_whitening
        with _without_autocast(samples):
            return self._batch_statistics(samples.to(_statistics_dtype(samples)))

    def _batch_statistics(self, samples: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean = samples.mean(0)
        centred = samples - mean
        identity = torch.eye(samples.shape[1], dtype=samples.dtype, device=samples.device)
        covariance = torch.addmm(identity, centred.t(), centred, beta=self.eps, alpha=1.0 / samples.shape[0])
        whitening = newton_schulz_isqrt(covariance, iterations=self.iterations)
        with torch.no_grad():
            self.running_mean.lerp_(mean.detach(), self.momentum)
            self.running_whitening.lerp_(whitening.detach(), self.momentum)
        return mean, whitening


def _blocks(channels: int, block: int) -> int:
    """The largest block size that divides the channels and is at most ``block``."""
    return max(d for d in range(1, min(block, channels) + 1) if channels % d == 0)


class InvariantConv2d(nn.Conv2d):
    """A convolution whose input patches are scale-normalised and whitened (see the module doc).

    Args:
        block: input channels sharing one covariance (``block x k x k`` features); the largest
            divisor of ``in_channels`` up to it.
        sampling_stride: the stride of the patches the batch statistics come from.
        iterations: Newton-Schulz iterations; eps: added to the covariance's diagonal.
        momentum: of the running estimates; rms_eps: added to each patch's mean square.
        scale_invariance: divide each patch by its RMS (False: whitening only).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, *, stride: int = 1,
                 padding: int = 0, dilation: int = 1, bias: bool = True, block: int = 16,
                 sampling_stride: int = 3, iterations: int = 5, eps: float = 1e-5, momentum: float = 0.1,
                 rms_eps: float = 1e-5, scale_invariance: bool = True):
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=padding,
                         dilation=dilation, bias=bias)
        self.block = _blocks(in_channels, block)
        self.sampling_stride, self.rms_eps, self.scale_invariance = sampling_stride, rms_eps, scale_invariance
        self.num_features = self.block * self.kernel_size[0] * self.kernel_size[1]
        self.whiten = _WhiteningStatistics(self.num_features, iterations=iterations, eps=eps, momentum=momentum)
        self._eval_fold = _EvalFold()

    def _patch_samples(self, x: torch.Tensor) -> torch.Tensor:
        """(samples, block x k x k): the patches at the sampling stride, scale-normalised, each
        block of channels one sample."""
        patches = F.unfold(x, self.kernel_size, dilation=self.dilation, padding=self.padding,
                           stride=self.sampling_stride)  # (N, C k k, L), columns channel-major
        if self.scale_invariance:
            patches = patches * torch.rsqrt(patches.pow(2).mean(1, keepdim=True) + self.rms_eps)
        return patches.transpose(1, 2).reshape(-1, self.num_features)

    def patch_rms(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 1, H_out, W_out): the RMS of each output position's patch (zero padding included)."""
        window = torch.full((1, 1, *self.kernel_size), 1.0 / (self.kernel_size[0] * self.kernel_size[1]),
                            dtype=x.dtype, device=x.device)
        mean_square = F.conv2d(x.pow(2).mean(1, keepdim=True), window, stride=self.stride,
                               padding=self.padding, dilation=self.dilation)
        return (mean_square + self.rms_eps).sqrt()

    def _fold(self, mean: torch.Tensor, whitening: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return fold_whitening(self.weight.reshape(self.out_channels, -1, self.num_features), self.bias, mean, whitening)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            weight, bias = self._fold(*self.whiten.statistics(self._patch_samples(x)))
        else:
            weight, bias = self._eval_fold.get(
                (self.weight, self.bias, self.whiten.running_mean, self.whiten.running_whitening),
                lambda: self._fold(*self.whiten.statistics(None)))
        y = F.conv2d(x, weight.reshape(self.weight.shape).to(x.dtype), None, self.stride, self.padding,
                     self.dilation)
        if self.scale_invariance:
            y = y / self.patch_rms(x)
        return y + bias.to(y.dtype).view(1, -1, 1, 1)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, block={self.block}, sampling_stride={self.sampling_stride}"


class InvariantLinear(nn.Linear):
    """A linear layer whose inputs are scale-normalised per token and whitened in blocks of
    ``block`` features (the form for transformers, section 3.3); ``sampling_stride`` takes every
    n-th token for the statistics."""

    def __init__(self, in_features: int, out_features: int, *, bias: bool = True, block: int = 16,
                 sampling_stride: int = 1, iterations: int = 5, eps: float = 1e-5, momentum: float = 0.1,
                 rms_eps: float = 1e-5, scale_invariance: bool = True):
        super().__init__(in_features, out_features, bias=bias)
        self.block = _blocks(in_features, block)
        self.sampling_stride, self.rms_eps, self.scale_invariance = sampling_stride, rms_eps, scale_invariance
        self.whiten = _WhiteningStatistics(self.block, iterations=iterations, eps=eps, momentum=momentum)
        self._eval_fold = _EvalFold()

    def _rms(self, x: torch.Tensor) -> torch.Tensor:
        return (x.pow(2).mean(-1, keepdim=True) + self.rms_eps).sqrt()

    def _fold(self, mean: torch.Tensor, whitening: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return fold_whitening(self.weight.reshape(self.out_features, -1, self.block), self.bias, mean, whitening)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            tokens = x.reshape(-1, self.in_features)[::self.sampling_stride]
            if self.scale_invariance:
                tokens = tokens / self._rms(tokens)
            weight, bias = self._fold(*self.whiten.statistics(tokens.reshape(-1, self.block)))
        else:
            weight, bias = self._eval_fold.get(
                (self.weight, self.bias, self.whiten.running_mean, self.whiten.running_whitening),
                lambda: self._fold(*self.whiten.statistics(None)))
        y = F.linear(x, weight.reshape(self.weight.shape).to(x.dtype))
        if self.scale_invariance:
            y = y / self._rms(x)
        return y + bias.to(y.dtype)


def invariant_linears(module: nn.Module, **options) -> nn.Module:
    """``module`` with every ``nn.Linear`` inside replaced by an ``InvariantLinear`` holding the
    same weights (the transformer form: attention and MLP projections)."""
    for name, child in module.named_children():
        if type(child) is nn.Linear:
            replacement = InvariantLinear(child.in_features, child.out_features, bias=child.bias is not None,
                                          **options).to(device=child.weight.device, dtype=child.weight.dtype)
            with torch.no_grad():
                replacement.weight.copy_(child.weight)
                if child.bias is not None:
                    replacement.bias.copy_(child.bias)
            setattr(module, name, replacement)
        else:
            invariant_linears(child, **options)
    return module
