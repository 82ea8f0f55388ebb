"""Parameter and multiply-add counts.

GMACs are counted with PyTorch's own ``FlopCounterMode``, which counts every matmul and
convolution (attention's ``scaled_dot_product_attention`` included) at 2 FLOPs per
multiply-add; the papers report multiply-adds, so the count is halved. An adder layer's
``|x - w|`` accumulations (AdderNet) are counted like multiply-adds, by forward hooks. Norms,
activations and pooling are not counted, as in the papers and fvcore. The model runs on the
``meta`` device, so counting a ViT-H costs no memory or compute.

``operation_counts`` splits the count by kind of layer into multiplications and additions, and
``energy_mj`` prices them (Adder FCOS, Chen et al., 2021, section 3.3: a convolution's
multiply-add is one fp32 multiplication and one addition, an adder layer's two additions; 3.7 pJ
per multiplication and 0.9 pJ per addition by default). An adder layer with centred output
channels (``AdderConv2d(center=True)``) adds its centring as a kind of its own: per position and
group of C channels, C additions, C subtractions and one multiplication by 1/C. A model with
``dense_forward`` (a one-stage detector) is counted through it: its network without
post-processing; an action detector through ``forward_whole_frames``: the clip and one box
covering its frame.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from vislab.layers.adder import ADDER_LAYERS


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# FlopCounterMode's operators by the kind of layer they are
OPERATOR_KINDS = {"convolution": "conv", "mm": "linear / matmul", "addmm": "linear / matmul",
                  "bmm": "linear / matmul", "baddbmm": "linear / matmul", "einsum": "linear / matmul"}
MULTIPLICATION_PJ, ADDITION_PJ = 3.7, 0.9  # fp32, 45 nm (Horowitz, 2014; Adder FCOS section 3.3)


def operation_counts(model: nn.Module, input_size: Sequence[int], *, batch_size: int = 1,
                     training: bool = False) -> dict[str, dict[str, float]]:
    """Per kind of layer (conv, linear / matmul, attention, adder), its multiply-adds, and the
    multiplications and additions they take, in 1e9 per input of ``input_size`` (a model taking
    several views of an image, such as MoCo, gets ``views_per_image`` of them). ``training``
    counts a training-mode forward (layers that compute batch statistics count them)."""
    device = next(model.parameters()).device
    x = torch.zeros(batch_size, *input_size, device=device)
    views = getattr(model, "views_per_image", 1)
    adder_macs, centred_outputs, centring_means = [0], [0], [0]

    def count_adder(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        per_output = module.weight[0].numel()  # inputs per output: in / groups x kernel, or in_features
        adder_macs[0] += output.numel() * per_output
        if getattr(module, "center", False):
            centred_outputs[0] += output.numel()
            centring_means[0] += output.numel() * module.groups // module.out_channels

    hooks = [m.register_forward_hook(count_adder) for m in model.modules() if isinstance(m, ADDER_LAYERS)]
    was_training = model.training
    model.train(training)
    counter = FlopCounterMode(display=False)
    forward = getattr(model, "dense_forward", None) or getattr(model, "forward_whole_frames", model)
    try:
        with counter, torch.no_grad():
            forward(x if views == 1 else [x] * views)
    finally:
        model.train(was_training)
        for hook in hooks:
            hook.remove()
    macs: dict[str, float] = {}
    for operator, flops in counter.get_flop_counts().get("Global", {}).items():
        name = getattr(operator, "__name__", str(operator))
        kind = OPERATOR_KINDS.get(name, "attention" if "attention" in name else name)
        macs[kind] = macs.get(kind, 0.0) + flops / 2
    if adder_macs[0]:
        macs["adder"] = float(adder_macs[0])
    scale = 1e9 * batch_size
    counts = {kind: {"macs": value / scale,
                     "multiplications": 0.0 if kind == "adder" else value / scale,
                     "additions": (2 if kind == "adder" else 1) * value / scale}
              for kind, value in macs.items()}
    if centred_outputs[0]:
        counts["adder centring"] = {"macs": 0.0, "multiplications": centring_means[0] / scale,
                                    "additions": 2 * centred_outputs[0] / scale}
    return counts


def energy_mj(counts: dict[str, dict[str, float]], *, multiplication_pj: float = MULTIPLICATION_PJ,
              addition_pj: float = ADDITION_PJ) -> float:
    """The energy (mJ) of ``operation_counts``: G operations times pJ per operation."""
    return sum(c["multiplications"] * multiplication_pj + c["additions"] * addition_pj for c in counts.values())


def count_gmacs(model: nn.Module, input_size: Sequence[int], *, batch_size: int = 1) -> float:
    """Multiply-adds (and adder accumulations), in 1e9, of one forward pass of ``model`` on one
    input of ``input_size``."""
    return sum(c["macs"] for c in operation_counts(model, input_size, batch_size=batch_size).values())


def on_meta(build: Callable[[], nn.Module]) -> nn.Module:
    """Build a model without allocating or initialising its weights."""
    with torch.device("meta"):
        return build()
