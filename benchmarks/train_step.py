"""Training-step benchmark: vislab's ResNet-50 against torchvision's.

One iteration is forward + cross-entropy loss + backward + SGD step (momentum 0.9) on a fixed
random batch (default 8 images at 224x224, 1000 classes). Both models are built with the same
seed and use BatchNorm. Timing is interleaved: every round times vislab and torchvision back to
back, alternating which goes first, and the median images/s over rounds is reported for each.

Peak memory is the increase over one model's warm-up plus a few steps, measured from just before
its first step: on CUDA from the allocator (``torch.cuda.max_memory_allocated``), on CPU as the
growth of peak RSS in a fresh subprocess per model (this script re-invoked with a hidden flag).
The machinery is shared with ``backbones.py`` and lives in ``train_bench.py``.

Run it with ``make benchmark``, or e.g.::

    python benchmarks/train_step.py --device cuda --channels-last
    python benchmarks/train_step.py --batch-size 2 --image-size 64 --steps 2 --rounds 2

The goal is vislab/torchvision >= 1.0x throughput and <= 1.0x peak memory.

``--fast`` measures instead how much of the machine a step uses: vislab's models in float32 eager
against channels_last, ``torch.compile`` and bf16 autocast (``fast_step.py``), with achieved
GFLOP/s beside the matmul peak. Goal: >= 2x over float32 eager::

    python benchmarks/train_step.py --fast --batch-size 8 --steps 2 --rounds 3
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torchvision

import vislab

# benchmarks/ is not a package: put this folder on sys.path so that its shared module imports
# however the script is started (e.g. also under `python -P` or when loaded by file path).
sys.path.insert(0, str(Path(__file__).resolve().parent))
import fast_step  # noqa: E402
import train_bench  # noqa: E402

LIBRARIES = ("vislab", "torchvision")
OPTIMIZER = "sgd"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Compare one training iteration (forward + backward + SGD momentum step) of "
                    "vislab's and torchvision's ResNet-50: throughput and peak memory.",
        epilog="example:\n  python benchmarks/train_step.py --device cuda --channels-last "
               "--json runs/train_step.json",
        formatter_class=train_bench.HelpFormatter,
    )
    train_bench.add_run_arguments(parser)
    parser.add_argument("--model", default="resnet50",
                        help="vislab registry name; torchvision's constructor of the same name "
                             "is the baseline")
    parser.add_argument("--fast", action="store_true",
                        help="measure channels_last, torch.compile and bf16 against fp32 eager instead")
    parser.add_argument("--fast-models", type=train_bench.names_from(vislab.list_models()),
                        default=["resnet50", "vit_b16"], help="comma-separated vislab models for --fast")
    parser.add_argument("--bf16", choices=("auto", "on", "off"), default="auto",
                        help="--fast: include bf16 autocast (auto: where the CPU has native bf16)")
    train_bench.add_report_arguments(parser)
    return parser


def summarize(*, args: argparse.Namespace, device: torch.device, comparison: dict) -> dict:
    return {
        "model": args.model,
        **train_bench.run_settings(args, device=device),
        "versions": train_bench.versions(("torchvision", "vislab")),
        **comparison,
    }


def print_report(summary: dict) -> None:
    layout = train_bench.layout_name(channels_last=summary["channels_last"])
    print(f"{summary['model']} train step (forward + backward + SGD momentum "
          f"{train_bench.MOMENTUM}) on {summary['device']}: batch {summary['batch_size']}, "
          f"{summary['image_size']}x{summary['image_size']}, {layout}, "
          f"{summary['rounds']} rounds x {summary['steps']} steps")
    print(f"{'library':<12} {'median img/s':>12} {'peak MiB':>10}  img/s per round")
    for library in LIBRARIES:
        per_round = ", ".join(f"{value:.1f}" for value in summary["images_per_second"][library])
        print(f"{library:<12} {summary['median_images_per_second'][library]:>12.1f} "
              f"{summary['peak_memory_mib'][library]:>10.1f}  {per_round}")
    print(f"throughput ratio (vislab/torchvision): {summary['throughput_ratio']:.2f}x  "
          f"peak memory ratio: {summary['memory_ratio']:.2f}x")
    print(f"goal: throughput >= 1.00x ({train_bench.met(summary['throughput_goal_met'])}), "
          f"peak memory <= 1.00x ({train_bench.met(summary['memory_goal_met'])})")


def main() -> None:
    parser = build_parser()
    args = parser.parse_args()
    if args.fast:
        summary = fast_step.run(args, device=train_bench.resolve_device(args.device, parser=parser))
        if args.json:
            train_bench.write_json(summary, path=args.json)
        return
    if args.model not in vislab.list_models():
        parser.error(f"vislab has no model {args.model!r}; choose from {vislab.list_models()}")
    if not callable(getattr(torchvision.models, args.model, None)):
        parser.error(f"torchvision.models has no constructor {args.model!r}")
    if args.measure_memory_of:
        train_bench.report_rss_increase(args)
        return
    device = train_bench.resolve_device(args.device, parser=parser)
    comparison = train_bench.measure_pair(
        candidate=train_bench.ModelSpec(library="vislab", name=args.model),
        baseline=train_bench.ModelSpec(library="torchvision", name=args.model),
        optimizer=OPTIMIZER, script=Path(__file__), args=args, device=device)
    summary = summarize(args=args, device=device, comparison=comparison)
    print_report(summary)
    if args.json:
        train_bench.write_json(summary, path=args.json)


if __name__ == "__main__":
    main()
