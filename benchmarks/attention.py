"""Attention under bf16 autocast on a CPU: vislab's ``attend`` (which runs PyTorch's attention
kernels in float32 on a CPU) against plain ``F.scaled_dot_product_attention`` (which autocast runs
in bf16), forward + backward, on the shapes vislab's transformers produce.

PyTorch 2.14's CPU flash-attention kernels are slower in bf16 than in fp32, most of all in their
backward; this measures by how much, per shape, interleaved over rounds (median reported):

    python benchmarks/attention.py
    python benchmarks/attention.py --device cuda   # attend changes nothing there: expect ~1.0x

The goal is attend/plain >= 1.0x throughput on every shape.
"""
from __future__ import annotations

import argparse
import statistics
import sys
from functools import partial
from pathlib import Path

import torch
from torch.nn import functional as F

from vislab.layers.sdpa import attend

sys.path.insert(0, str(Path(__file__).resolve().parent))
import train_bench  # noqa: E402

# (what, batch x heads, tokens, head dim, with an additive mask)
SHAPES = (
    ("MAE ViT-Ti/8 encoder, 64 images, 25% of 256 patches", 64 * 3, 64, 64, False),
    ("MAE decoder, 64 images, 256 tokens", 64 * 4, 256, 32, False),
    ("ViTDet-B window block at 512 (rel-pos mask)", 16 * 12, 196, 64, True),
    ("ViTDet-B global block at 512 (rel-pos mask)", 12, 1024, 64, True),
    ("small ViTDet window block, 8 images at 160", 8 * 16 * 3, 25, 64, True),
)


def step(function, q, k, v, mask, device: torch.device) -> None:
    with torch.autocast(device.type, dtype=torch.bfloat16):
        out = function(q, k, v, attn_mask=mask)
    out.float().sum().backward()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=train_bench.HelpFormatter)
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--steps", type=train_bench.positive_int, default=5)
    parser.add_argument("--rounds", type=train_bench.positive_int, default=3)
    args = parser.parse_args(argv)
    device = train_bench.resolve_device(args.device, parser=parser)
    generator = torch.Generator().manual_seed(0)
    for what, batch, tokens, dim, masked in SHAPES:
        q, k, v = (torch.randn(batch, 1, tokens, dim, generator=generator).to(device).requires_grad_()
                   for _ in range(3))
        mask = torch.randn(batch, 1, tokens, tokens, generator=generator).to(device).requires_grad_() if masked else None
        runs = {name: partial(lambda f: [step(f, q, k, v, mask, device) for _ in range(args.steps)], function)
                for name, function in (("attend", attend), ("plain", F.scaled_dot_product_attention))}
        for run in runs.values():
            run()  # warm-up
        seconds = train_bench.interleaved_rounds(
            {name: partial(train_bench.elapsed_seconds, run, device=device) for name, run in runs.items()},
            rounds=args.rounds)
        ratio = statistics.median(seconds["plain"]) / statistics.median(seconds["attend"])
        print(f"{what}: attend {statistics.median(seconds['attend']) / args.steps * 1e3:.1f} ms, plain "
              f"{statistics.median(seconds['plain']) / args.steps * 1e3:.1f} ms per step -> {ratio:.2f}x "
              f"(goal >= 1.0x: {train_bench.met(ratio >= 1.0)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
