"""Adder-layer benchmark: vislab's ``AdderConv2d`` against the reference formulation of the
official AdderNet code (unfold the input, broadcast the ``(out, in * k * k, positions)`` difference
tensor forward and again backward), and against ``nn.Conv2d`` of the same shape.

The shape is a 3x3 layer of ResNet-50's second stage: 64 -> 64 channels on 56x56 maps, 2 images
(``--batch-size``, ``--size``, ``--channels`` change it). One iteration is forward + backward of
the sum of the outputs times a fixed random gradient. Timing is interleaved over rounds (median
reported); peak memory is the growth of peak RSS in a fresh subprocess per layer (this script
re-invoked with a hidden flag, glibc's mmap threshold fixed as ``train_bench.child_peak_mib``
does), or the CUDA allocator's peak. Goals: vislab / reference >= 3x speed and <= 0.25x peak
memory.

    python benchmarks/adder.py
    python benchmarks/adder.py --device cuda
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from functools import partial
from pathlib import Path
from typing import Callable

import torch
from torch import nn
from torch.nn import functional as F

from vislab.layers.adder import AdderConv2d

sys.path.insert(0, str(Path(__file__).resolve().parent))
import train_bench  # noqa: E402

LAYERS = ("vislab", "reference", "conv")


class _ReferenceAdder(torch.autograd.Function):
    """AdderNet's ``adder.py``: the difference tensor is built in the forward pass and again in the
    backward pass, where the weight gets ``sum (X - W) g`` and the input ``sum HT(W - X) g``."""

    @staticmethod
    def forward(ctx, columns: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(columns, weight)
        return -(weight[:, :, None] - columns[None]).abs().sum(1)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        columns, weight = ctx.saved_tensors
        grad_weight = ((columns[None] - weight[:, :, None]) * grad[:, None]).sum(2)
        grad_columns = ((weight[:, :, None] - columns[None]).clamp(-1, 1) * grad[:, None]).sum(0)
        return grad_columns, grad_weight


class ReferenceAdderConv2d(nn.Module):
    """A 3x3, stride-1, 'same' adder layer computed as the official code does."""

    def __init__(self, weight: torch.Tensor):
        super().__init__()
        self.weight = nn.Parameter(weight.clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, _, height, width = x.shape
        out_channels, _, k, _ = self.weight.shape
        columns = F.unfold(x, k, padding=k // 2).permute(1, 2, 0).reshape(self.weight[0].numel(), -1)
        out = _ReferenceAdder.apply(columns, self.weight.view(out_channels, -1))
        return out.view(out_channels, height, width, batch).permute(3, 0, 1, 2)


def build(layer: str, *, channels: int) -> nn.Module:
    torch.manual_seed(0)
    adder = AdderConv2d(channels, channels, 3, padding=1)
    if layer == "vislab":
        return adder
    if layer == "reference":
        return ReferenceAdderConv2d(adder.weight.detach())
    return nn.Conv2d(channels, channels, 3, padding=1, bias=False)


def make_step(layer: nn.Module, *, args: argparse.Namespace, device: torch.device) -> Callable[[], None]:
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(args.batch_size, args.channels, args.size, args.size, generator=generator).to(device)
    x.requires_grad_()
    grad = torch.randn(args.batch_size, args.channels, args.size, args.size, generator=generator).to(device)
    layer.to(device)

    def step() -> None:
        x.grad = None
        layer.zero_grad(set_to_none=True)
        layer(x).backward(grad)

    return step


def report_rss_increase(args: argparse.Namespace) -> None:
    """Child mode: run one layer on CPU and print its peak-RSS increase as JSON."""
    step = make_step(build(args.measure_memory_of, channels=args.channels), args=args, device=torch.device("cpu"))
    Path("/proc/self/clear_refs").write_text("5")
    before = train_bench.peak_rss_kib()
    for _ in range(2):
        step()
    print(json.dumps({"layer": args.measure_memory_of, "peak_rss_increase_kib": train_bench.peak_rss_kib() - before}))


def peak_memory_mib(args: argparse.Namespace, *, device: torch.device) -> dict[str, float]:
    if device.type == "cuda":
        return {layer: train_bench.cuda_peak_increase_mib(
            make_step(build(layer, channels=args.channels), args=args, device=device), device=device)
            for layer in LAYERS}
    return {layer: train_bench.child_peak_mib(
        [sys.executable, str(Path(__file__).resolve()), "--measure-memory-of", layer, "--batch-size",
         str(args.batch_size), "--size", str(args.size), "--channels", str(args.channels)]) for layer in LAYERS}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=train_bench.HelpFormatter)
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--batch-size", type=train_bench.positive_int, default=2)
    parser.add_argument("--size", type=train_bench.positive_int, default=56, help="height and width of the maps")
    parser.add_argument("--channels", type=train_bench.positive_int, default=64)
    parser.add_argument("--steps", type=train_bench.positive_int, default=2)
    parser.add_argument("--rounds", type=train_bench.positive_int, default=3)
    parser.add_argument("--measure-memory-of", choices=LAYERS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.measure_memory_of:
        report_rss_increase(args)
        return 0
    device = train_bench.resolve_device(args.device, parser=parser)
    memory = peak_memory_mib(args, device=device)
    steps = {layer: make_step(build(layer, channels=args.channels), args=args, device=device) for layer in LAYERS}
    for step in steps.values():
        step()
    seconds = train_bench.interleaved_rounds(
        {layer: partial(train_bench.elapsed_seconds, partial(lambda s: [s() for _ in range(args.steps)], step),
                        device=device) for layer, step in steps.items()}, rounds=args.rounds)
    per_step = {layer: statistics.median(values) / args.steps for layer, values in seconds.items()}
    speed = per_step["reference"] / per_step["vislab"]
    memory_ratio = memory["vislab"] / memory["reference"]
    print(f"AdderConv2d {args.channels}->{args.channels} 3x3 on {args.batch_size}x{args.size}x{args.size}, forward + "
          f"backward on {device}: vislab {per_step['vislab'] * 1e3:.0f} ms, reference "
          f"{per_step['reference'] * 1e3:.0f} ms -> {speed:.1f}x (goal >= 3x: {train_bench.met(speed >= 3)}); "
          f"peak memory {memory['vislab']:.0f} vs {memory['reference']:.0f} MiB -> {memory_ratio:.3f}x "
          f"(goal <= 0.25x: {train_bench.met(memory_ratio <= 0.25)}); "
          f"nn.Conv2d {per_step['conv'] * 1e3:.1f} ms, {memory['conv']:.0f} MiB (vislab adder / conv: "
          f"{per_step['vislab'] / per_step['conv']:.1f}x the time)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
