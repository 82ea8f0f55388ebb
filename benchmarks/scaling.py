"""Memory for large models: FSDP2 against DDP, and activation checkpointing against none.

**FSDP against DDP.** Two processes (gloo on CPU, one thread each; NCCL and one GPU each with
``--device cuda``) train MAE ViT-L (``mae_vit_l16``, 329M parameters, AdamW) on a fixed random
batch, once under DDP and once sharded the way ``train.strategy=fsdp`` shards it
(``vislab.engine.strategy.shard``: each block, then the root). Reported per process: the peak
memory of the training steps, above what the interpreter held before the model was built; on
CPU that is the peak RSS (``VmHWM``, reset just before the first step, so building the full model
before sharding it does not count) less the RSS after imports; on CUDA the allocator's peak.
Goal: FSDP <= 0.6x DDP.

**Activation checkpointing.** One process trains ViT-B/16 (``vit_b16``) with and without
``train.activation_checkpointing`` (``vislab.engine.block_wrapping.wrap_blocks``), each in a fresh
interpreter. Activation memory is the peak during a step above the memory held before it
(weights, gradients kept between steps, optimizer state); step time is the median over the timed
steps. Goal: <= 0.5x activation memory at <= 1.4x step time.

CPU children run with glibc's mmap threshold fixed (``train_bench.child_peak_mib``'s reason), so
RSS follows the live tensors. Run it with::

    python benchmarks/scaling.py                       # both parts, CPU
    python benchmarks/scaling.py --part fsdp --fsdp-model mae_vit_b16 --image-size 112
    python benchmarks/scaling.py --device cuda --batch-size 8
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn import functional as F

import vislab
from vislab.engine.block_wrapping import wrap_blocks
from vislab.engine.strategy import shard

sys.path.insert(0, str(Path(__file__).resolve().parent))
import train_bench  # noqa: E402

MIB = 2**20


def reset_peak(device: torch.device) -> None:
    """Start a new peak: the allocator's on CUDA, ``VmHWM`` (through ``clear_refs``) on Linux."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    else:
        Path("/proc/self/clear_refs").write_text("5")


def peak_mib(device: torch.device, *, baseline_kib: int) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) / MIB
    return (train_bench.peak_rss_kib() - baseline_kib) / 1024


def mae_steps(model: torch.nn.Module, optimizer: torch.optim.Optimizer, images: torch.Tensor, *,
              steps: int, device: torch.device) -> list[float]:
    """Seconds per MAE step (forward with its own masking, reconstruction loss, backward, AdamW)."""
    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        model(images)["loss"].backward()
        optimizer.step()

    return [train_bench.elapsed_seconds(step, device=device) for _ in range(steps)]


def strategy_worker(args: argparse.Namespace) -> None:
    """One of two processes training the MAE model under ``args.strategy``; rank 0 prints JSON."""
    device = torch.device("cuda", int(os.environ["LOCAL_RANK"])) if args.device == "cuda" else torch.device("cpu")
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    baseline = train_bench.status_kib("VmRSS")
    torch.manual_seed(0)
    model = vislab.create_model(args.fsdp_model, img_size=args.image_size).to(device)
    if args.strategy == "fsdp":
        shard([model], device=device, world_size=dist.get_world_size(), amp_dtype=None)
        trained = model
    else:
        trained = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.index is not None else None)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05)
    images = torch.randn(args.batch_size, 3, args.image_size, args.image_size, device=device)
    reset_peak(device)
    times = mae_steps(trained, optimizer, images, steps=args.warmup + args.steps, device=device)
    peaks = [None] * dist.get_world_size()
    dist.all_gather_object(peaks, peak_mib(device, baseline_kib=baseline))
    if dist.get_rank() == 0:
        print(json.dumps({"strategy": args.strategy, "peak_mib_per_process": peaks,
                          "step_seconds": statistics.median(times[args.warmup:])}))
    dist.destroy_process_group()


def run_strategy(args: argparse.Namespace, strategy: str) -> dict:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               str(Path(__file__).resolve()), "--worker", strategy, "--device", args.device,
               "--fsdp-model", args.fsdp_model, "--image-size", str(args.image_size),
               "--batch-size", str(args.batch_size), "--steps", str(args.steps), "--warmup", str(args.warmup)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MALLOC_MMAP_THRESHOLD_": str(train_bench.MMAP_THRESHOLD_BYTES)}
    completed = subprocess.run(command, check=True, stdout=subprocess.PIPE, text=True, env=env)
    return json.loads(completed.stdout.splitlines()[-1])


def checkpointing_child(args: argparse.Namespace) -> None:
    """ViT-B training steps with or without activation checkpointing; prints JSON."""
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = vislab.create_model(args.checkpointing_model, img_size=args.image_size).to(device)
    wrap_blocks(model, activation_checkpointing=args.child == "checkpointed", compile_blocks=False)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05)
    images = torch.randn(args.batch_size, 3, args.image_size, args.image_size, device=device)
    labels = torch.randint(0, 1000, (args.batch_size,), device=device)

    def step() -> None:
        optimizer.zero_grad(set_to_none=False)  # gradients stay allocated: the increase is activations
        F.cross_entropy(model(images), labels).backward()
        optimizer.step()

    for _ in range(args.warmup):
        step()
    before = (torch.cuda.memory_allocated(device) / MIB if device.type == "cuda" else train_bench.status_kib("VmRSS") / 1024)
    reset_peak(device)
    times = [train_bench.elapsed_seconds(step, device=device) for _ in range(args.steps)]
    peak = peak_mib(device, baseline_kib=0)
    print(json.dumps({"setting": args.child, "activation_mib": peak - before,
                      "step_seconds": statistics.median(times)}))


def run_checkpointing(args: argparse.Namespace, setting: str) -> dict:
    command = [sys.executable, str(Path(__file__).resolve()), "--child", setting, "--device", args.device,
               "--checkpointing-model", args.checkpointing_model, "--image-size", str(args.image_size),
               "--batch-size", str(args.checkpointing_batch_size), "--steps", str(args.steps),
               "--warmup", str(args.warmup)]
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(train_bench.MMAP_THRESHOLD_BYTES)}
    completed = subprocess.run(command, check=True, stdout=subprocess.PIPE, text=True, env=env)
    return json.loads(completed.stdout.splitlines()[-1])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=train_bench.HelpFormatter)
    parser.add_argument("--part", choices=["all", "fsdp", "checkpointing"], default="all")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--fsdp-model", default="mae_vit_l16", help="registry name of the FSDP/DDP model (an MAE)")
    parser.add_argument("--checkpointing-model", default="vit_b16", help="registry name of the checkpointed model")
    parser.add_argument("--image-size", type=train_bench.positive_int, default=224)
    parser.add_argument("--batch-size", type=train_bench.positive_int, default=2, help="images per process (FSDP/DDP)")
    parser.add_argument("--checkpointing-batch-size", type=train_bench.positive_int, default=8)
    parser.add_argument("--steps", type=train_bench.positive_int, default=2, help="measured steps")
    parser.add_argument("--warmup", type=train_bench.positive_int, default=1)
    parser.add_argument("--json", type=Path, help="also write the summary here")
    parser.add_argument("--worker", choices=["ddp", "fsdp"], help=argparse.SUPPRESS)
    parser.add_argument("--child", choices=["eager", "checkpointed"], help=argparse.SUPPRESS)
    return parser


def main() -> None:
    args = build_parser().parse_args()
    if args.worker:
        args.strategy = args.worker
        return strategy_worker(args)
    if args.child:
        return checkpointing_child(args)
    summary: dict = {"device": args.device, "image_size": args.image_size, "torch": torch.__version__}
    if args.part in ("all", "fsdp"):
        runs = {strategy: run_strategy(args, strategy) for strategy in ("ddp", "fsdp")}
        ratio = max(runs["fsdp"]["peak_mib_per_process"]) / max(runs["ddp"]["peak_mib_per_process"])
        summary["fsdp"] = {"model": args.fsdp_model, "batch_size_per_process": args.batch_size, **runs,
                           "memory_ratio": ratio, "goal_met": ratio <= 0.6}
        print(f"{args.fsdp_model}, 2 processes, {args.batch_size} images each: peak per process "
              f"DDP {max(runs['ddp']['peak_mib_per_process']):.0f} MiB, FSDP "
              f"{max(runs['fsdp']['peak_mib_per_process']):.0f} MiB: {ratio:.2f}x (goal <= 0.6x, "
              f"{train_bench.met(ratio <= 0.6)}); step {runs['ddp']['step_seconds']:.2f} s vs "
              f"{runs['fsdp']['step_seconds']:.2f} s")
    if args.part in ("all", "checkpointing"):
        runs = {setting: run_checkpointing(args, setting) for setting in ("eager", "checkpointed")}
        memory = runs["checkpointed"]["activation_mib"] / runs["eager"]["activation_mib"]
        time_ratio = runs["checkpointed"]["step_seconds"] / runs["eager"]["step_seconds"]
        met = memory <= 0.5 and time_ratio <= 1.4
        summary["checkpointing"] = {"model": args.checkpointing_model, "batch_size": args.checkpointing_batch_size,
                                    **runs, "memory_ratio": memory, "time_ratio": time_ratio, "goal_met": met}
        print(f"{args.checkpointing_model}, batch {args.checkpointing_batch_size}: activations "
              f"{runs['eager']['activation_mib']:.0f} -> {runs['checkpointed']['activation_mib']:.0f} MiB "
              f"({memory:.2f}x) at {time_ratio:.2f}x step time (goal <= 0.5x at <= 1.4x, {train_bench.met(met)})")
    if args.json:
        train_bench.write_json(summary, path=args.json)


if __name__ == "__main__":
    main()
