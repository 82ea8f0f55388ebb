"""Training-step benchmark: vislab's ResNet-50 against torchvision's.

One iteration is forward + cross-entropy loss + backward + SGD step (momentum 0.9) on a fixed
random batch (default 8 images at 224x224, 1000 classes). Both models are built with the same
seed and use BatchNorm. Timing is interleaved: every round times vislab and torchvision back to
back, alternating which goes first, and the median images/s over rounds is reported for each.

Peak memory is the increase over one model's warm-up plus a few steps, measured from just before
its first step: on CUDA from the allocator (``torch.cuda.max_memory_allocated``), on CPU as the
growth of peak RSS in a fresh subprocess per model (this script re-invoked with a hidden flag).

Run it with ``make benchmark``, or e.g.::

    python benchmarks/train_step.py --device cuda --channels-last
    python benchmarks/train_step.py --batch-size 2 --image-size 64 --steps 2 --rounds 2

The goal is vislab/torchvision >= 1.0x throughput and <= 1.0x peak memory.
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torchvision
from torch import nn
from torch.nn import functional as F

import vislab

NUM_CLASSES = 1000
SEED = 0
LEARNING_RATE = 0.1
MOMENTUM = 0.9
MEMORY_STEPS = 3  # steps after warm-up in a peak-memory measurement
LIBRARIES = ("vislab", "torchvision")
MIB = 2**20
KIB_PER_MIB = 1024


@dataclass
class Trainee:
    """One library's model with its optimizer."""

    library: str
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Compare one training iteration (forward + backward + SGD momentum step) of "
                    "vislab's and torchvision's ResNet-50: throughput and peak memory.",
        epilog="example:\n  python benchmarks/train_step.py --device cuda --channels-last "
               "--json runs/train_step.json",
        formatter_class=HelpFormatter,
    )
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
    parser.add_argument("--model", default="resnet50",
                        help="vislab registry name; torchvision's constructor of the same name "
                             "is the baseline")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the results here")
    parser.add_argument("--measure-memory-of", choices=LIBRARIES, help=argparse.SUPPRESS)
    return parser


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def memory_format(*, channels_last: bool) -> torch.memory_format:
    return torch.channels_last if channels_last else torch.contiguous_format


def build_model(library: str, *, model_name: str) -> nn.Module:
    torch.manual_seed(SEED)
    if library == "vislab":
        return vislab.create_model(model_name, num_classes=NUM_CLASSES)
    return getattr(torchvision.models, model_name)(num_classes=NUM_CLASSES)


def build_trainee(library: str, *, model_name: str, device: torch.device,
                  channels_last: bool) -> Trainee:
    model = build_model(library, model_name=model_name)
    model.to(device=device, memory_format=memory_format(channels_last=channels_last))
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=LEARNING_RATE, momentum=MOMENTUM)
    return Trainee(library=library, model=model, optimizer=optimizer)


def make_batch(*, batch_size: int, image_size: int, device: torch.device,
               channels_last: bool) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(SEED)
    images = torch.randn(batch_size, 3, image_size, image_size)
    labels = torch.randint(0, NUM_CLASSES, (batch_size,))
    images = images.to(device=device, memory_format=memory_format(channels_last=channels_last))
    return images, labels.to(device=device)


def train_steps(trainee: Trainee, batch: tuple[torch.Tensor, torch.Tensor], *,
                steps: int) -> None:
    images, labels = batch
    for _ in range(steps):
        trainee.optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(trainee.model(images), labels)
        loss.backward()
        trainee.optimizer.step()


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def images_per_second(trainee: Trainee, batch: tuple[torch.Tensor, torch.Tensor], *,
                      steps: int, device: torch.device) -> float:
    synchronize(device)
    start = time.perf_counter()
    train_steps(trainee, batch, steps=steps)
    synchronize(device)
    return steps * len(batch[0]) / (time.perf_counter() - start)


def timed_rounds(trainees: list[Trainee], batch: tuple[torch.Tensor, torch.Tensor], *,
                 steps: int, rounds: int, device: torch.device) -> dict[str, list[float]]:
    """Images/s per round for each library, alternating which library runs first."""
    results: dict[str, list[float]] = {trainee.library: [] for trainee in trainees}
    for index in range(rounds):
        order = trainees if index % 2 == 0 else trainees[::-1]
        for trainee in order:
            results[trainee.library].append(
                images_per_second(trainee, batch, steps=steps, device=device))
    return results


def cuda_peak_mib(trainee: Trainee, batch: tuple[torch.Tensor, torch.Tensor], *, steps: int,
                  device: torch.device) -> float:
    """Peak allocated CUDA memory over ``steps`` steps, above what was allocated before them."""
    synchronize(device)
    baseline = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    train_steps(trainee, batch, steps=steps)
    synchronize(device)
    return (torch.cuda.max_memory_allocated(device) - baseline) / MIB


def peak_rss_kib() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux


def report_rss_increase(args: argparse.Namespace) -> None:
    """Child mode: train one model on CPU and print its peak-RSS increase as JSON."""
    device = torch.device("cpu")
    trainee = build_trainee(args.measure_memory_of, model_name=args.model, device=device,
                            channels_last=args.channels_last)
    batch = make_batch(batch_size=args.batch_size, image_size=args.image_size, device=device,
                       channels_last=args.channels_last)
    before = peak_rss_kib()
    train_steps(trainee, batch, steps=args.warmup + MEMORY_STEPS)
    print(json.dumps({"library": args.measure_memory_of,
                      "peak_rss_increase_kib": peak_rss_kib() - before}))


def subprocess_peak_mib(library: str, *, args: argparse.Namespace) -> float:
    """Peak-RSS increase of training ``library``'s model on CPU, in a fresh interpreter."""
    command = [sys.executable, str(Path(__file__).resolve()), "--measure-memory-of", library,
               "--device", "cpu", "--model", args.model, "--batch-size", str(args.batch_size),
               "--image-size", str(args.image_size), "--warmup", str(args.warmup)]
    if args.channels_last:
        command.append("--channels-last")
    completed = subprocess.run(command, check=True, stdout=subprocess.PIPE, text=True)
    report = json.loads(completed.stdout.splitlines()[-1])
    return report["peak_rss_increase_kib"] / KIB_PER_MIB


def peak_memory_mib(trainees: list[Trainee], batch: tuple[torch.Tensor, torch.Tensor], *,
                    args: argparse.Namespace, device: torch.device) -> dict[str, float]:
    if device.type == "cuda":
        return {trainee.library: cuda_peak_mib(trainee, batch, steps=args.warmup + MEMORY_STEPS,
                                               device=device)
                for trainee in trainees}
    return {trainee.library: subprocess_peak_mib(trainee.library, args=args)
            for trainee in trainees}


def summarize(*, args: argparse.Namespace, device: torch.device,
              throughput: dict[str, list[float]], memory: dict[str, float]) -> dict:
    medians = {library: statistics.median(values) for library, values in throughput.items()}
    throughput_ratio = medians["vislab"] / medians["torchvision"]
    memory_ratio = memory["vislab"] / memory["torchvision"]
    return {
        "model": args.model,
        "device": str(device),
        "batch_size": args.batch_size,
        "image_size": args.image_size,
        "channels_last": args.channels_last,
        "steps": args.steps,
        "warmup": args.warmup,
        "rounds": args.rounds,
        "versions": {"torch": torch.__version__, "torchvision": torchvision.__version__,
                     "vislab": vislab.__version__},
        "images_per_second": throughput,
        "median_images_per_second": medians,
        "peak_memory_mib": memory,
        "throughput_ratio": throughput_ratio,
        "memory_ratio": memory_ratio,
        "throughput_goal_met": throughput_ratio >= 1.0,
        "memory_goal_met": memory_ratio <= 1.0,
    }


def print_report(summary: dict) -> None:
    layout = "channels_last" if summary["channels_last"] else "contiguous"
    print(f"{summary['model']} train step (forward + backward + SGD momentum {MOMENTUM}) on "
          f"{summary['device']}: batch {summary['batch_size']}, "
          f"{summary['image_size']}x{summary['image_size']}, {layout}, "
          f"{summary['rounds']} rounds x {summary['steps']} steps")
    print(f"{'library':<12} {'median img/s':>12} {'peak MiB':>10}  img/s per round")
    for library in LIBRARIES:
        per_round = ", ".join(f"{value:.1f}" for value in summary["images_per_second"][library])
        print(f"{library:<12} {summary['median_images_per_second'][library]:>12.1f} "
              f"{summary['peak_memory_mib'][library]:>10.1f}  {per_round}")
    print(f"throughput ratio (vislab/torchvision): {summary['throughput_ratio']:.2f}x  "
          f"peak memory ratio: {summary['memory_ratio']:.2f}x")
    print(f"goal: throughput >= 1.00x ({met(summary['throughput_goal_met'])}), "
          f"peak memory <= 1.00x ({met(summary['memory_goal_met'])})")


def met(flag: bool) -> str:
    return "met" if flag else "NOT met"


def main() -> None:
    parser = build_parser()
    args = parser.parse_args()
    if args.model not in vislab.list_models():
        parser.error(f"vislab has no model {args.model!r}; choose from {vislab.list_models()}")
    if not callable(getattr(torchvision.models, args.model, None)):
        parser.error(f"torchvision.models has no constructor {args.model!r}")
    if args.measure_memory_of:
        report_rss_increase(args)
        return
    device = resolve_device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda requested but CUDA is not available")

    trainees = [build_trainee(library, model_name=args.model, device=device,
                              channels_last=args.channels_last) for library in LIBRARIES]
    batch = make_batch(batch_size=args.batch_size, image_size=args.image_size, device=device,
                       channels_last=args.channels_last)
    memory = peak_memory_mib(trainees, batch, args=args, device=device)
    for trainee in trainees:
        train_steps(trainee, batch, steps=args.warmup)
    throughput = timed_rounds(trainees, batch, steps=args.steps, rounds=args.rounds,
                              device=device)
    summary = summarize(args=args, device=device, throughput=throughput, memory=memory)
    print_report(summary)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
