"""Shared machinery of the benchmarks that compare two models (``train_step.py``, ``backbones.py``;
``detection.py`` uses the timing, memory and report helpers).

A model is named by a ``ModelSpec``, written ``LIBRARY:MODEL`` (``vislab:resnet50``,
``timm:convnext_tiny``, ``torchvision:resnet50``). A *trainee* is such a model, built from a fixed
seed with a 1000-class head, together with its optimizer. One step is forward + cross-entropy loss
+ backward + optimizer step on a fixed random batch.

``measure_pair`` compares two trainees: throughput is timed in interleaved rounds (each round
times both back to back, alternating which goes first; the median images/s over rounds is
reported), and peak memory is the increase over warm-up plus a few steps, measured from just
before the first step: on CUDA from the allocator (``torch.cuda.max_memory_allocated``), on CPU as
the growth of peak RSS in a fresh interpreter per model, with a fixed mmap threshold. That
interpreter runs the calling script again with the hidden flags ``--measure-memory-of
LIBRARY:MODEL --memory-optimizer NAME`` (added by ``add_report_arguments``), which the script
hands to ``report_rss_increase``.
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable, Iterable

import torch
import torchvision
from torch import nn
from torch.nn import functional as F

import vislab

NUM_CLASSES = 1000
SEED = 0
SGD_LEARNING_RATE = 0.1
MOMENTUM = 0.9
ADAMW_LEARNING_RATE = 1e-3
WEIGHT_DECAY = 0.05
OPTIMIZERS = ("sgd", "adamw")
LIBRARIES = ("vislab", "timm", "torchvision")
# ViT and MViTv2 size their position tables for one input size (and timm's ViT rejects any other):
# vislab's and timm's are built for the benchmark's image size, so parameter counts stay equal.
SIZED_MODEL_PREFIXES = ("vit_", "mvitv2_")
MMAP_THRESHOLD_BYTES = 64 * 1024  # glibc mmap threshold of the CPU peak-memory child (see child_peak_mib)
MEMORY_STEPS = 3  # steps after warm-up in a peak-memory measurement
MIB = 2**20
KIB_PER_MIB = 1024

Batch = tuple[torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class ModelSpec:
    """A model named by its library and its name there."""

    library: str
    name: str

    def __str__(self) -> str:
        return f"{self.library}:{self.name}"


@dataclass
class Trainee:
    """One model with its optimizer."""

    spec: ModelSpec
    model: nn.Module
    optimizer: torch.optim.Optimizer


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Show defaults and keep the epilog's line breaks."""


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {value}")
    return value


def names_from(choices: Iterable[str]) -> Callable[[str], list[str]]:
    """An argparse ``type`` for a comma-separated list of names, each one of ``choices``."""
    allowed = list(choices)

    def parse(text: str) -> list[str]:
        names = [name.strip() for name in text.split(",") if name.strip()]
        unknown = [name for name in names if name not in allowed]
        if not names or unknown:
            raise argparse.ArgumentTypeError(f"unknown model(s) {', '.join(unknown) or '(none given)'}; "
                                             f"choose from {', '.join(allowed)}")
        return names

    return parse


def model_spec(text: str) -> ModelSpec:
    """Parse ``LIBRARY:MODEL``."""
    library, _, name = text.partition(":")
    if library not in LIBRARIES or not name:
        raise argparse.ArgumentTypeError(
            f"expected LIBRARY:MODEL with LIBRARY one of {', '.join(LIBRARIES)}, got {text!r}")
    return ModelSpec(library=library, name=name)


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """The batch, timing, device and memory-format options."""
    parser.add_argument("--batch-size", type=positive_int, default=8, help="images per step")
    parser.add_argument("--image-size", type=positive_int, default=224,
                        help="height and width of the square input images")
    parser.add_argument("--steps", type=positive_int, default=10, help="timed steps per round")
    parser.add_argument("--warmup", type=non_negative_int, default=2,
                        help="untimed steps per model before the first round")
    parser.add_argument("--rounds", type=positive_int, default=3,
                        help="interleaved rounds; the median over rounds is reported")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="auto picks cuda if available, else cpu")
    parser.add_argument("--channels-last", action="store_true",
                        help="put both models and the inputs in channels_last memory format")


def add_report_arguments(parser: argparse.ArgumentParser) -> None:
    """``--json``, and the hidden flags of the CPU peak-memory child (``subprocess_peak_mib``)."""
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the results here")
    parser.add_argument("--measure-memory-of", type=model_spec, help=argparse.SUPPRESS)
    parser.add_argument("--memory-optimizer", choices=OPTIMIZERS, help=argparse.SUPPRESS)


def resolve_device(name: str, *, parser: argparse.ArgumentParser) -> torch.device:
    """The ``--device`` choice; ``auto`` picks cuda if available, else cpu."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda requested but CUDA is not available")
    return torch.device(name)


def memory_format(*, channels_last: bool) -> torch.memory_format:
    return torch.channels_last if channels_last else torch.contiguous_format


def size_options(spec: ModelSpec, *, image_size: int) -> dict[str, int]:
    return {"img_size": image_size} if spec.name.startswith(SIZED_MODEL_PREFIXES) else {}


def build_model(spec: ModelSpec, *, image_size: int) -> nn.Module:
    torch.manual_seed(SEED)
    if spec.library == "vislab":
        return vislab.create_model(spec.name, num_classes=NUM_CLASSES,
                                   **size_options(spec, image_size=image_size))
    if spec.library == "timm":
        import timm  # a dev dependency: imported only when a timm model is compared

        return timm.create_model(spec.name, pretrained=False, num_classes=NUM_CLASSES,
                                 **size_options(spec, image_size=image_size))
    return getattr(torchvision.models, spec.name)(num_classes=NUM_CLASSES)


def build_optimizer(name: str, *, model: nn.Module) -> torch.optim.Optimizer:
    if name == "sgd":
        return torch.optim.SGD(model.parameters(), lr=SGD_LEARNING_RATE, momentum=MOMENTUM)
    return torch.optim.AdamW(model.parameters(), lr=ADAMW_LEARNING_RATE, weight_decay=WEIGHT_DECAY)


def build_trainee(spec: ModelSpec, *, optimizer: str, image_size: int, device: torch.device,
                  channels_last: bool) -> Trainee:
    model = build_model(spec, image_size=image_size)
    model.to(device=device, memory_format=memory_format(channels_last=channels_last))
    model.train()
    return Trainee(spec=spec, model=model, optimizer=build_optimizer(optimizer, model=model))


def make_batch(*, batch_size: int, image_size: int, device: torch.device,
               channels_last: bool) -> Batch:
    torch.manual_seed(SEED)
    images = torch.randn(batch_size, 3, image_size, image_size)
    labels = torch.randint(0, NUM_CLASSES, (batch_size,))
    images = images.to(device=device, memory_format=memory_format(channels_last=channels_last))
    return images, labels.to(device=device)


def train_steps(trainee: Trainee, batch: Batch, *, steps: int) -> None:
    images, labels = batch
    for _ in range(steps):
        trainee.optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(trainee.model(images), labels)
        loss.backward()
        trainee.optimizer.step()


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def elapsed_seconds(run: Callable[[], None], *, device: torch.device) -> float:
    """Wall-clock time of ``run``, from and to an idle device."""
    synchronize(device)
    start = time.perf_counter()
    run()
    synchronize(device)
    return time.perf_counter() - start


def images_per_second(trainee: Trainee, batch: Batch, *, steps: int,
                      device: torch.device) -> float:
    elapsed = elapsed_seconds(lambda: train_steps(trainee, batch, steps=steps), device=device)
    return steps * len(batch[0]) / elapsed


def interleaved_rounds(measures: dict[str, Callable[[], float]], *,
                       rounds: int) -> dict[str, list[float]]:
    """Each measure's value per round, alternating which measure runs first."""
    names = list(measures)
    results: dict[str, list[float]] = {name: [] for name in names}
    for index in range(rounds):
        for name in names if index % 2 == 0 else names[::-1]:
            results[name].append(measures[name]())
    return results


def timed_rounds(trainees: list[Trainee], batch: Batch, *, steps: int, rounds: int,
                 device: torch.device) -> dict[str, list[float]]:
    """Images/s per round for each trainee's library, alternating which trainee runs first."""
    return interleaved_rounds(
        {trainee.spec.library: partial(images_per_second, trainee, batch, steps=steps, device=device)
         for trainee in trainees}, rounds=rounds)


def cuda_peak_increase_mib(run: Callable[[], None], *, device: torch.device) -> float:
    """Peak allocated CUDA memory during ``run``, above what was allocated before it."""
    synchronize(device)
    baseline = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    run()
    synchronize(device)
    return (torch.cuda.max_memory_allocated(device) - baseline) / MIB


def cuda_peak_mib(trainee: Trainee, batch: Batch, *, steps: int, device: torch.device) -> float:
    """Peak allocated CUDA memory over ``steps`` steps, above what was allocated before them."""
    return cuda_peak_increase_mib(lambda: train_steps(trainee, batch, steps=steps), device=device)


def status_kib(field: str) -> int:
    """A memory field of this process's ``/proc/self/status`` (``VmRSS``, ``VmHWM``), in KiB."""
    status = Path("/proc/self/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith(f"{field}:")).split()[1])


def peak_rss_kib() -> int:
    """This process's peak RSS (Linux ``VmHWM``). Not ``getrusage``'s ``ru_maxrss``: a child
    inherits its parent's peak there at exec, which would hide the child's own growth."""
    return status_kib("VmHWM")


def report_rss_increase(args: argparse.Namespace) -> None:
    """Child mode: train ``--measure-memory-of`` on CPU and print its peak-RSS increase as JSON."""
    device = torch.device("cpu")
    trainee = build_trainee(args.measure_memory_of, optimizer=args.memory_optimizer,
                            image_size=args.image_size, device=device,
                            channels_last=args.channels_last)
    batch = make_batch(batch_size=args.batch_size, image_size=args.image_size, device=device,
                       channels_last=args.channels_last)
    before = peak_rss_kib()
    train_steps(trainee, batch, steps=args.warmup + MEMORY_STEPS)
    print(json.dumps({"model": str(args.measure_memory_of),
                      "peak_rss_increase_kib": peak_rss_kib() - before}))


def subprocess_peak_mib(spec: ModelSpec, *, optimizer: str, script: Path,
                        args: argparse.Namespace) -> float:
    """Peak-RSS increase of training ``spec`` on CPU, in ``script`` re-run in child mode."""
    command = [sys.executable, str(script.resolve()), "--measure-memory-of", str(spec),
               "--memory-optimizer", optimizer, "--device", "cpu",
               "--batch-size", str(args.batch_size), "--image-size", str(args.image_size),
               "--warmup", str(args.warmup)]
    if args.channels_last:
        command.append("--channels-last")
    return child_peak_mib(command)


def child_peak_mib(command: list[str]) -> float:
    """Run ``command``, a benchmark script in child mode, and read the peak-RSS increase it
    prints as JSON (``peak_rss_increase_kib``) on its last line.

    The child runs with glibc's mmap threshold fixed at 64 KiB (``MALLOC_MMAP_THRESHOLD_``): every
    tensor-sized block is mapped on its own and unmapped when freed, so RSS follows the live
    tensors. With glibc's default, sliding threshold, freed blocks stay in the heap in a pattern
    that moved one child's peak by up to ~10% from run to run, more than the goals judge."""
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(MMAP_THRESHOLD_BYTES)}
    completed = subprocess.run(command, check=True, stdout=subprocess.PIPE, text=True, env=env)
    return json.loads(completed.stdout.splitlines()[-1])["peak_rss_increase_kib"] / KIB_PER_MIB


def peak_memory_mib(trainees: list[Trainee], batch: Batch, *, optimizer: str, script: Path,
                    args: argparse.Namespace, device: torch.device) -> dict[str, float]:
    if device.type == "cuda":
        return {trainee.spec.library: cuda_peak_mib(trainee, batch,
                                                    steps=args.warmup + MEMORY_STEPS,
                                                    device=device)
                for trainee in trainees}
    return {trainee.spec.library: subprocess_peak_mib(trainee.spec, optimizer=optimizer,
                                                      script=script, args=args)
            for trainee in trainees}


def compare(*, throughput: dict[str, list[float]], memory: dict[str, float], candidate: str,
            baseline: str) -> dict:
    """Medians and candidate/baseline ratios; the goals are >= 1.0x throughput, <= 1.0x memory."""
    medians = {library: statistics.median(values) for library, values in throughput.items()}
    throughput_ratio = medians[candidate] / medians[baseline]
    memory_ratio = memory[candidate] / memory[baseline]
    return {
        "images_per_second": throughput,
        "median_images_per_second": medians,
        "peak_memory_mib": memory,
        "throughput_ratio": throughput_ratio,
        "memory_ratio": memory_ratio,
        "throughput_goal_met": throughput_ratio >= 1.0,
        "memory_goal_met": memory_ratio <= 1.0,
    }


def measure_pair(*, candidate: ModelSpec, baseline: ModelSpec, optimizer: str, script: Path,
                 args: argparse.Namespace, device: torch.device) -> dict:
    """Peak memory and interleaved throughput of two models from different libraries, compared
    (see ``compare``; results are keyed by library). ``script`` is re-run for CPU memory."""
    trainees = [build_trainee(spec, optimizer=optimizer, image_size=args.image_size,
                              device=device, channels_last=args.channels_last)
                for spec in (candidate, baseline)]
    batch = make_batch(batch_size=args.batch_size, image_size=args.image_size, device=device,
                       channels_last=args.channels_last)
    memory = peak_memory_mib(trainees, batch, optimizer=optimizer, script=script, args=args,
                             device=device)
    for trainee in trainees:
        train_steps(trainee, batch, steps=args.warmup)
    throughput = timed_rounds(trainees, batch, steps=args.steps, rounds=args.rounds,
                              device=device)
    return compare(throughput=throughput, memory=memory, candidate=candidate.library,
                   baseline=baseline.library)


def run_settings(args: argparse.Namespace, *, device: torch.device) -> dict:
    return {
        "device": str(device),
        "batch_size": args.batch_size,
        "image_size": args.image_size,
        "channels_last": args.channels_last,
        "steps": args.steps,
        "warmup": args.warmup,
        "rounds": args.rounds,
    }


def median_ratio(rates: dict[str, list[float]]) -> dict:
    """Each side's median rate over rounds and vislab / pytorchvideo (goal >= 1.0x)."""
    medians = {side: statistics.median(values) for side, values in rates.items()}
    ratio = medians["vislab"] / medians["pytorchvideo"]
    return {"clips_per_second": rates, "median_clips_per_second": medians, "throughput_ratio": ratio,
            "throughput_goal_met": ratio >= 1.0}


def versions(libraries: tuple[str, ...]) -> dict[str, str]:
    """``__version__`` of torch and of each of ``libraries``."""
    return {"torch": torch.__version__,
            **{name: importlib.import_module(name).__version__ for name in libraries}}


def layout_name(*, channels_last: bool) -> str:
    return "channels_last" if channels_last else "contiguous"


def met(flag: bool) -> str:
    return "met" if flag else "NOT met"


def write_json(summary: dict, *, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(summary, indent=2) + "\n")
