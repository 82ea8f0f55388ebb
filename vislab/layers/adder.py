"""Adder layers (Chen et al., 2020, "AdderNet: Do We Really Need Multiplications in Deep
Learning?"): a filter's response is the negative L1 distance between it and the input patch,
``Y = -sum |X - W|`` (eq. 4), computed with additions and subtractions only.

Gradients (section 3.2): the weight gets the full-precision gradient ``X - W`` (eq. 5) instead of
the sign of it; the input gets ``HardTanh(W - X)`` (eq. 6, AdderNet) or ``sign(W - X)`` (the exact
derivative, which Adder FCOS uses: Chen et al., 2021, section 2.1.2), chosen by ``input_grad``.
The adaptive learning-rate scaling of eq. 13 is applied by the optimizer (``engine.optim``), not
here, so these gradients are the layer's own.

``center=True`` (a vislab option, in neither AdderNet nor Adder FCOS) subtracts, at every
position, the mean over the layer's output channels (per group). With weights small beside their
inputs, ``-sum |x - w|`` is nearly ``-sum |x|`` for every filter: the output channels start as
copies of one signal and the gradients reaching the input are rank-one, and a half-width adder
ResNet-18 does not learn the shapes objects' crops (docs/getting-started.md, "One-stage and adder
detectors"); removing that common part lets it learn. It costs per position C additions, C
subtractions and one multiplication by 1/C, which the energy count (models/complexity.py) includes.

Nothing here builds the ``(out, in * k * k, positions)`` difference tensor of the reference code.
The weight gradient is two matrix products (``G^T X - W * sum(G)``). The forward distances and the
input gradient have no product form: on large inputs they run as kernels that ``torch.compile``
fuses into one loop each (on this project's CPUs 7x and 4x faster than ``torch.cdist`` and a
blocked computation); on small ones, or where compilation fails (a warning says so once), as
``torch.cdist(p=1)`` and a sum over output filters in blocks of rows whose size bounds memory.
"""
from __future__ import annotations

import math
import warnings
from functools import partial

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.modules.utils import _pair

INPUT_GRADIENTS = ("hardtanh", "sign")
INITS = ("kaiming", "normal")
# the ``conv`` option of models with adder layers and the AdderConv2d options each stands for:
# AdderNet's input gradient, Adder FCOS's sign, and either with centred output channels (which
# start from AdderNet's N(0, 1) weights, as they were measured)
ADDER_KINDS = {
    "adder": {"input_grad": "hardtanh"},
    "adder_sign": {"input_grad": "sign"},
    "adder_centered": {"input_grad": "hardtanh", "center": True, "init": "normal"},
    "adder_sign_centered": {"input_grad": "sign", "center": True, "init": "normal"},
}
BLOCK_ELEMENTS = 2**22  # elements of one (rows, out, in) block of the eager input gradient
COMPILE_ELEMENTS = 2**22  # rows x out x in from which the compiled kernels run


def _l1_distances(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return (x[:, None, :] - weight[None]).abs().sum(-1)


def _hardtanh_input_gradient(x: torch.Tensor, weight: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    return ((weight[None] - x[:, None, :]).clamp(-1, 1) * grad[:, :, None]).sum(1)


def _sign_input_gradient(x: torch.Tensor, weight: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    return ((weight[None] - x[:, None, :]).sign() * grad[:, :, None]).sum(1)


_EAGER = {"distances": lambda x, w: torch.cdist(x[None], w[None], p=1)[0]}
_KERNELS = {"distances": _l1_distances, "hardtanh": _hardtanh_input_gradient, "sign": _sign_input_gradient}
_compiled: dict[str, object] = {}


def _kernel(name: str, size: int):
    """The compiled kernel ``name`` for a problem of ``size`` elements, or None: small problems
    and platforms where ``torch.compile`` fails use the eager forms."""
    if size < COMPILE_ELEMENTS or _compiled.get(name, True) is None:
        return None
    if name not in _compiled:
        _compiled[name] = torch.compile(_KERNELS[name], dynamic=True)
    return _compiled[name]


def _run(name: str, size: int, eager, *args: torch.Tensor) -> torch.Tensor:
    kernel = _kernel(name, size)
    if kernel is not None:
        try:
            return kernel(*args)
        except Exception as exc:  # no C++ compiler, unsupported platform: the eager form is exact too
            warnings.warn(f"torch.compile of the adder {name} kernel failed ({type(exc).__name__}: {exc}); "
                          f"adder layers run eagerly, several times slower", RuntimeWarning, stacklevel=2)
            _compiled[name] = None
    return eager(*args)


def _blocked_input_gradient(x: torch.Tensor, weight: torch.Tensor, grad: torch.Tensor, *, mode: str) -> torch.Tensor:
    grad_x = torch.empty_like(x)
    rows = max(1, BLOCK_ELEMENTS // weight.numel())
    for start in range(0, len(x), rows):
        diff = weight[None] - x[start:start + rows, None]  # (rows, O, J)
        diff = diff.clamp_(-1, 1) if mode == "hardtanh" else diff.sign_()
        grad_x[start:start + rows] = torch.einsum("ro,roj->rj", grad[start:start + rows], diff)
    return grad_x


class _AdderFunction(torch.autograd.Function):
    """``-sum_j |x[r, j] - w[o, j]|`` for ``x`` ``(R, J)`` and ``w`` ``(O, J)``, with AdderNet's gradients."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, input_grad: str) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.input_grad = input_grad
        return -_run("distances", x.shape[0] * weight.numel(), _EAGER["distances"], x, weight)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, weight = ctx.saved_tensors
        grad_x = grad_w = None
        if ctx.needs_input_grad[1]:  # sum_r (x_r - w) g_r, the full-precision gradient
            grad_w = grad.t() @ x - weight * grad.sum(dim=0)[:, None]
        if ctx.needs_input_grad[0]:
            mode = ctx.input_grad
            grad_x = _run(mode, x.shape[0] * weight.numel(), partial(_blocked_input_gradient, mode=mode),
                          x, weight, grad.contiguous())
        return grad_x, grad_w, None


def adder(x: torch.Tensor, weight: torch.Tensor, *, input_grad: str = "hardtanh") -> torch.Tensor:
    """``-sum_j |x[r, j] - weight[o, j]|`` as ``(R, O)``, differentiable with AdderNet's rules."""
    if input_grad not in INPUT_GRADIENTS:
        raise ValueError(f"input_grad={input_grad!r} is not one of {', '.join(INPUT_GRADIENTS)}")
    if x.dtype in (torch.float16, torch.bfloat16):  # sums of many |x - w| need float32
        x = x.float()
    return _AdderFunction.apply(x, weight.to(x.dtype), input_grad)


class AdderConv2d(nn.Module):
    """An adder layer with ``nn.Conv2d``'s geometry (kernel, stride, padding, dilation, groups);
    no bias by default, as AdderNet follows every adder layer with BatchNorm.

    ``weight`` is ``(out, in / groups, kh, kw)`` like a convolution's, initialised as PyTorch
    initialises one (``init="kaiming"``) or as AdderNet's code does, N(0, 1) (``init="normal"``).
    The scale matters even under BatchNorm: with weights much smaller than the inputs,
    ``-sum |x - w|`` is close to ``-sum |x|`` for every filter, and at initialisation the filters'
    responses nearly coincide; ``center=True`` removes that common part (see the module docstring).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | tuple[int, int], *, stride: int = 1,
                 padding: int = 0, dilation: int = 1, groups: int = 1, bias: bool = False,
                 input_grad: str = "hardtanh", center: bool = False, init: str = "kaiming"):
        super().__init__()
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"{in_channels} input and {out_channels} output channels are not divisible by "
                             f"{groups} groups")
        if input_grad not in INPUT_GRADIENTS:
            raise ValueError(f"input_grad={input_grad!r} is not one of {', '.join(INPUT_GRADIENTS)}")
        if init not in INITS:
            raise ValueError(f"init={init!r} is not one of {', '.join(INITS)}")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride = _pair(kernel_size), _pair(stride)
        self.padding, self.dilation = _pair(padding), _pair(dilation)
        self.groups = groups
        self.input_grad, self.center = input_grad, center
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels // groups, *self.kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        if init == "normal":
            nn.init.normal_(self.weight)
        else:
            nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, _, height, width = x.shape
        out_h, out_w = (
            (size + 2 * p - d * (k - 1) - 1) // s + 1
            for size, p, d, k, s in zip((height, width), self.padding, self.dilation, self.kernel_size, self.stride))
        columns = F.unfold(x, self.kernel_size, dilation=self.dilation, padding=self.padding, stride=self.stride)
        columns = columns.view(batch, self.groups, -1, out_h * out_w)  # (B, G, J, L)
        per_group = self.out_channels // self.groups
        outputs = []
        for group in range(self.groups):
            rows = columns[:, group].transpose(1, 2).reshape(batch * out_h * out_w, -1)  # (B * L, J)
            weight = self.weight[group * per_group:(group + 1) * per_group].flatten(1)
            distances = adder(rows, weight, input_grad=self.input_grad)  # (B * L, per_group)
            if self.center:
                distances = distances - distances.mean(dim=1, keepdim=True)
            outputs.append(distances.view(batch, out_h * out_w, per_group))
        out = torch.cat(outputs, dim=2).transpose(1, 2).reshape(batch, self.out_channels, out_h, out_w)
        if self.bias is not None:
            out = out + self.bias[:, None, None]
        return out.to(x.dtype)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, groups={self.groups}, input_grad={self.input_grad}"
                + (", center=True" if self.center else ""))


class AdderLinear(nn.Module):
    """``y_o = -sum_i |x_i - W[o, i]| (+ b_o)``: the adder form of a fully connected layer."""

    def __init__(self, in_features: int, out_features: int, *, bias: bool = False, input_grad: str = "hardtanh"):
        super().__init__()
        if input_grad not in INPUT_GRADIENTS:
            raise ValueError(f"input_grad={input_grad!r} is not one of {', '.join(INPUT_GRADIENTS)}")
        self.in_features, self.out_features, self.input_grad = in_features, out_features, input_grad
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = adder(x.reshape(-1, self.in_features), self.weight, input_grad=self.input_grad)
        out = out.reshape(*x.shape[:-1], self.out_features)
        return (out if self.bias is None else out + self.bias).to(x.dtype)


ADDER_LAYERS = (AdderConv2d, AdderLinear)


def adder_conv(kind: str, w_in: int, w_out: int, k: int, *, stride: int = 1, groups: int = 1) -> AdderConv2d:
    """The adder layer of the model option ``conv=kind`` (a key of ``ADDER_KINDS``), 'same' padding
    for odd kernels."""
    return AdderConv2d(w_in, w_out, k, stride=stride, padding=k // 2, groups=groups, **ADDER_KINDS[kind])


def adder_weights(model: nn.Module) -> list[nn.Parameter]:
    """The weights of every adder layer in ``model`` (what the adaptive lr scaling applies to)."""
    return [module.weight for module in model.modules() if isinstance(module, ADDER_LAYERS)]
