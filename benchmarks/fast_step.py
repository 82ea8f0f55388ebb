"""``train_step.py --fast``: how close a training step gets to this machine's arithmetic peak.

Each model (ResNet-50 and ViT-B/16 by default) trains one batch repeatedly (forward,
cross-entropy, backward, SGD momentum) under a ladder of settings, timed in interleaved rounds:

- ``fp32``: float32, eager, contiguous: the baseline;
- ``channels_last``: the same in channels_last memory format (convolutions only);
- ``compiled``: channels_last and ``torch.compile`` block by block, as ``train.compile`` does it
  (``vislab.engine.block_wrapping``);
- ``bf16``: all of that under bf16 autocast, as ``train.amp`` does it; only where the CPU has
  native bf16 (AVX512-BF16 or AMX) unless ``--bf16 on``: elsewhere oneDNN emulates it at a
  fraction of float32's speed.

Achieved GFLOP/s count a step as three forward passes (the backward pass costs about two) of
``vislab.models.complexity.count_gmacs`` multiply-adds, two FLOPs each, and are shown beside the
peak of a large matmul in float32 and bf16 measured in the same run.
"""
from __future__ import annotations

import argparse
import contextlib
import statistics
import time

import torch
from torch.nn import functional as F

from vislab.engine.block_wrapping import wrap_blocks
from vislab.engine.precision import cpu_emulates_bf16
from vislab.models.complexity import count_gmacs

import train_bench

SETTINGS = ("fp32", "channels_last", "compiled", "bf16")


def matmul_gflops(dtype: torch.dtype, *, device: torch.device, min_seconds: float = 0.5) -> float:
    """GFLOP/s of a square matmul, grown from 256 until one product takes ``min_seconds`` (or
    reaches 4096)."""
    size = 256
    while True:
        a, b = (torch.randn(size, size, device=device).to(dtype) for _ in range(2))
        a @ b
        seconds = train_bench.elapsed_seconds(lambda: a @ b, device=device)
        if seconds >= min_seconds or size >= 4096:
            return 2 * size**3 / seconds / 1e9
        size *= 2


def build(name: str, setting: str, *, image_size: int, device: torch.device):
    model = train_bench.build_model(train_bench.ModelSpec(library="vislab", name=name), image_size=image_size)
    channels_last = setting != "fp32"
    model.to(device=device, memory_format=train_bench.memory_format(channels_last=channels_last)).train()
    if setting in ("compiled", "bf16"):
        wrap_blocks(model, activation_checkpointing=False, compile_blocks=True)
    optimizer = torch.optim.SGD(model.parameters(), lr=train_bench.SGD_LEARNING_RATE, momentum=train_bench.MOMENTUM)
    autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if setting == "bf16" else contextlib.nullcontext

    def step(images: torch.Tensor, labels: torch.Tensor) -> None:
        optimizer.zero_grad(set_to_none=True)
        with autocast():
            loss = F.cross_entropy(model(images), labels)
        loss.backward()
        optimizer.step()

    return model, step, channels_last


def measure_model(name: str, *, settings: list[str], args: argparse.Namespace, device: torch.device) -> dict:
    gmacs = count_gmacs(train_bench.build_model(train_bench.ModelSpec(library="vislab", name=name),
                                                image_size=args.image_size), (3, args.image_size, args.image_size))
    runs, warmup_seconds = {}, {}
    for setting in settings:
        _, step, channels_last = build(name, setting, image_size=args.image_size, device=device)
        images, labels = train_bench.make_batch(batch_size=args.batch_size, image_size=args.image_size,
                                                device=device, channels_last=channels_last)
        started = time.perf_counter()
        for _ in range(max(args.warmup, 1)):  # compiles here
            step(images, labels)
        warmup_seconds[setting] = time.perf_counter() - started
        runs[setting] = (step, images, labels)

    def rate(setting: str) -> float:
        step, images, labels = runs[setting]
        seconds = train_bench.elapsed_seconds(lambda: [step(images, labels) for _ in range(args.steps)], device=device)
        return args.steps * args.batch_size / seconds

    per_round = train_bench.interleaved_rounds({s: (lambda s=s: rate(s)) for s in settings}, rounds=args.rounds)
    medians = {s: statistics.median(v) for s, v in per_round.items()}
    flops_per_image = 3 * 2 * gmacs  # GFLOP: forward + a backward of about twice its cost
    return {"gmacs_per_image": gmacs, "images_per_second": per_round, "median_images_per_second": medians,
            "gflops_per_second": {s: medians[s] * flops_per_image for s in settings},
            "speedup_over_fp32": {s: medians[s] / medians["fp32"] for s in settings},
            "warmup_seconds": warmup_seconds}


def run(args: argparse.Namespace, *, device: torch.device) -> dict:
    native_bf16 = device.type == "cuda" or not cpu_emulates_bf16()
    use_bf16 = args.bf16 == "on" or (args.bf16 == "auto" and native_bf16)
    settings = [s for s in SETTINGS if s != "bf16" or use_bf16]
    peaks = {"fp32": matmul_gflops(torch.float32, device=device),
             "bf16": matmul_gflops(torch.bfloat16, device=device)}
    summary = {"device": str(device), "batch_size": args.batch_size, "image_size": args.image_size,
               "threads": torch.get_num_threads(), "native_bf16": native_bf16, "settings": settings,
               "matmul_peak_gflops": peaks, "models": {}}
    print(f"matmul peak on {device} ({torch.get_num_threads()} threads): fp32 {peaks['fp32']:.0f} GFLOP/s, "
          f"bf16 {peaks['bf16']:.1f} GFLOP/s ({'native' if native_bf16 else 'emulated'} bf16)")
    for name in args.fast_models:
        result = measure_model(name, settings=settings, args=args, device=device)
        summary["models"][name] = result
        print(f"{name}, batch {args.batch_size} at {args.image_size} px ({result['gmacs_per_image']:.1f} GMACs/image):")
        for setting in settings:
            print(f"  {setting:<14} {result['median_images_per_second'][setting]:7.2f} img/s  "
                  f"{result['gflops_per_second'][setting]:6.0f} GFLOP/s  "
                  f"{result['speedup_over_fp32'][setting]:.2f}x  (warm-up {result['warmup_seconds'][setting]:.0f} s)")
    best = {name: max(r["speedup_over_fp32"].values()) for name, r in summary["models"].items()}
    summary["best_speedup"] = best
    summary["goal_met"] = all(v >= 2.0 for v in best.values())
    print(f"goal: >= 2x over fp32 eager ({train_bench.met(summary['goal_met'])}: "
          f"{', '.join(f'{n} {v:.2f}x' for n, v in best.items())})")
    return summary
