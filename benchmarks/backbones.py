"""Training-step benchmark: vislab's backbones against their reference implementations.

Four pairs, each with a 1000-class head and built from the same seed, without pretrained weights:

    vislab vit_b16        vs  timm vit_base_patch16_224
    vislab convnext_tiny  vs  timm convnext_tiny
    vislab mvitv2_tiny    vs  timm mvitv2_tiny
    vislab resnet50       vs  torchvision resnet50

One iteration is forward + cross-entropy loss + backward + optimizer step on a fixed random batch
(default 8 images at 224x224). The optimizer follows each family's usual recipe: AdamW (lr 1e-3,
weight decay 0.05) for ViT, ConvNeXt and MViTv2, SGD with momentum 0.9 for ResNet-50. ViT and
MViTv2 are built for ``--image-size`` on both sides, so smaller test inputs work and parameter
counts stay equal.

The pairs run one after another in one run. Within a pair timing is interleaved: every round
times vislab and the reference back to back, alternating which goes first, and the median
images/s over rounds is reported for each. Peak memory is the increase over warm-up plus a few
steps, measured from just before the first step: on CUDA from the allocator, on CPU as the growth
of peak RSS in a fresh subprocess per model (this script re-invoked with a hidden flag). The
machinery is shared with ``train_step.py`` and lives in ``train_bench.py``.

Run it on a GPU with::

    python benchmarks/backbones.py --device cuda
    python benchmarks/backbones.py --device cuda --channels-last --json runs/backbones.json

or as a quick smoke test on CPU::

    python benchmarks/backbones.py --models vit_b16,convnext_tiny --batch-size 1 --image-size 64 \\
        --steps 1 --warmup 1 --rounds 1

The goal is vislab/reference >= 1.0x throughput for every pair; the peak-memory ratio is reported
alongside (lower is better).
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

# benchmarks/ is not a package: put this folder on sys.path so that its shared module imports
# however the script is started (e.g. also under `python -P` or when loaded by file path).
sys.path.insert(0, str(Path(__file__).resolve().parent))
import train_bench  # noqa: E402
from train_bench import ModelSpec  # noqa: E402


@dataclass(frozen=True)
class Pair:
    """A vislab model, its reference implementation and the optimizer both are trained with."""

    model: str
    reference: ModelSpec
    optimizer: str

    @property
    def candidate(self) -> ModelSpec:
        return ModelSpec(library="vislab", name=self.model)


PAIRS = {pair.model: pair for pair in (
    Pair(model="vit_b16", reference=ModelSpec(library="timm", name="vit_base_patch16_224"),
         optimizer="adamw"),
    Pair(model="convnext_tiny", reference=ModelSpec(library="timm", name="convnext_tiny"),
         optimizer="adamw"),
    Pair(model="mvitv2_tiny", reference=ModelSpec(library="timm", name="mvitv2_tiny"),
         optimizer="adamw"),
    Pair(model="resnet50", reference=ModelSpec(library="torchvision", name="resnet50"),
         optimizer="sgd"),
)}
# Table columns: title and format spec (alignment and width).
COLUMNS = (("model", "<13"), ("reference", "<26"), ("optim", "<5"), ("vislab img/s", ">12"),
           ("ref img/s", ">10"), ("vislab MiB", ">10"), ("ref MiB", ">9"),
           ("img/s ratio", ">11"), ("MiB ratio", ">9"))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Compare one training iteration (forward + backward + optimizer step) of "
                    "vislab's ViT-B/16, ConvNeXt-T, MViTv2-T and ResNet-50 with timm's and "
                    "torchvision's: throughput and peak memory.",
        epilog="example:\n  python benchmarks/backbones.py --device cuda --channels-last "
               "--json runs/backbones.json",
        formatter_class=train_bench.HelpFormatter,
    )
    train_bench.add_run_arguments(parser)
    parser.add_argument("--models", type=train_bench.names_from(PAIRS), default=",".join(PAIRS),
                        help="comma-separated vislab models to compare with their references")
    train_bench.add_report_arguments(parser)
    return parser


def table_line(cells: list[str]) -> str:
    return " ".join(f"{cell:{spec}}" for cell, (_, spec) in zip(cells, COLUMNS))


def print_header(args: argparse.Namespace, *, device: torch.device) -> None:
    layout = train_bench.layout_name(channels_last=args.channels_last)
    print(f"train step (forward + backward + optimizer step) on {device}: "
          f"batch {args.batch_size}, {args.image_size}x{args.image_size}, {layout}, "
          f"{args.rounds} rounds x {args.steps} steps")
    print(table_line([title for title, _ in COLUMNS]), flush=True)


def print_row(pair: Pair, *, comparison: dict) -> None:
    medians = comparison["median_images_per_second"]
    memory = comparison["peak_memory_mib"]
    reference = pair.reference.library
    cells = [pair.model, str(pair.reference), pair.optimizer,
             f"{medians['vislab']:.1f}", f"{medians[reference]:.1f}",
             f"{memory['vislab']:.1f}", f"{memory[reference]:.1f}",
             f"{comparison['throughput_ratio']:.2f}x", f"{comparison['memory_ratio']:.2f}x"]
    print(table_line(cells), flush=True)


def print_goals(results: dict[str, dict]) -> None:
    for model, result in results.items():
        print(f"{model} vs {result['reference']}: throughput {result['throughput_ratio']:.2f}x "
              f"(goal >= 1.00x: {train_bench.met(result['throughput_goal_met'])})")


def main() -> None:
    parser = build_parser()
    args = parser.parse_args()
    if args.measure_memory_of:
        train_bench.report_rss_increase(args)
        return
    device = train_bench.resolve_device(args.device, parser=parser)
    print_header(args, device=device)
    results = {}
    for model in args.models:
        pair = PAIRS[model]
        comparison = train_bench.measure_pair(
            candidate=pair.candidate, baseline=pair.reference, optimizer=pair.optimizer,
            script=Path(__file__), args=args, device=device)
        print_row(pair, comparison=comparison)
        results[model] = {"reference": str(pair.reference), "optimizer": pair.optimizer,
                          **comparison}
    print_goals(results)
    if args.json:
        summary = {**train_bench.run_settings(args, device=device),
                   "versions": train_bench.versions(("timm", "torchvision", "vislab")),
                   "pairs": results}
        train_bench.write_json(summary, path=args.json)


if __name__ == "__main__":
    main()
