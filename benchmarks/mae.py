"""MAE training-step benchmark: how much of MAE's FLOP saving shows up as speed.

MAE's encoder runs on the visible 25% of the patches only, and its decoder is narrow (He et al.,
2022, section 3: "this can reduce overall pre-training time by 3x or more"). For each model this
times one MAE pre-training step (mask ratio 0.75, the default 512-wide 8-block decoder, forward +
loss + backward + SGD step) against one full-token step of the same ViT (the classifier with the
same encoder, forward on all tokens + cross-entropy + backward + SGD step), on one fixed random
batch. Timing is interleaved: every round times both back to back, alternating which goes first,
and the median seconds per step over rounds is reported.

The speed ratio is full-token step time / MAE step time; the FLOP ratio is the full-token
forward's multiply-adds / the MAE forward's (both counted by ``vislab.models.complexity``); the
goal is speed ratio / FLOP ratio >= 90%, i.e. MAE realises at least 90% of its FLOP saving.

Run it on a GPU with::

    python benchmarks/mae.py --device cuda --batch 64 --amp

or as a quick smoke test on CPU::

    python benchmarks/mae.py --device cpu --batch 2 --steps 2
"""
from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch.nn import functional as F

import vislab
from vislab.models.complexity import count_gmacs, on_meta

sys.path.insert(0, str(Path(__file__).resolve().parent))
import train_bench  # noqa: E402

# MAE model -> the ViT classifier with the same encoder (MAE's fixed sine-cosine position embedding)
FULL_TOKEN_MODELS = {"mae_vit_b16": "vit_b16", "mae_vit_l16": "vit_l16", "mae_vit_h14": "vit_h14"}
DEFAULT_MODELS = "mae_vit_b16,mae_vit_l16"
NUM_CLASSES = 1000
LEARNING_RATE = 1e-3
MOMENTUM = 0.9
SEED = 0
EFFICIENCY_GOAL = 0.9

Step = Callable[[], None]


@dataclass(frozen=True)
class Contender:
    """One way of training the ViT: its name in the report and one training step."""

    name: str
    step: Step


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Time an MAE pre-training step against a full-token step of the same ViT and "
                    "compare the speed-up with the FLOP reduction.",
        epilog="example:\n  python benchmarks/mae.py --device cuda --batch 64 --amp",
        formatter_class=train_bench.HelpFormatter)
    parser.add_argument("--models", type=train_bench.names_from(FULL_TOKEN_MODELS), default=DEFAULT_MODELS,
                        help=f"comma-separated MAE models, from {', '.join(FULL_TOKEN_MODELS)}")
    parser.add_argument("--batch", type=train_bench.positive_int, default=8, help="images per step")
    parser.add_argument("--image-size", type=train_bench.positive_int, default=224,
                        help="height and width of the square input images")
    parser.add_argument("--steps", type=train_bench.positive_int, default=10, help="timed steps per round")
    parser.add_argument("--warmup", type=train_bench.non_negative_int, default=2,
                        help="untimed steps of each contender before the first round")
    parser.add_argument("--rounds", type=train_bench.positive_int, default=3,
                        help="interleaved rounds; the median over rounds is reported")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="auto picks cuda if available, else cpu")
    parser.add_argument("--amp", action="store_true", help="bf16 autocast, as MAE pre-trains in mixed precision")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the results here")
    return parser


def autocast(*, device: torch.device, enabled: bool) -> contextlib.AbstractContextManager:
    return torch.autocast(device.type, dtype=torch.bfloat16) if enabled else contextlib.nullcontext()


def build_models(mae_name: str, *, image_size: int, device: torch.device) -> tuple[torch.nn.Module, torch.nn.Module]:
    """The MAE model and the ViT classifier with its encoder's architecture, from one seed."""
    torch.manual_seed(SEED)
    mae = vislab.create_model(mae_name, img_size=image_size).to(device).train()
    torch.manual_seed(SEED)
    full = vislab.create_model(FULL_TOKEN_MODELS[mae_name], num_classes=NUM_CLASSES, pos_embed="sincos",
                               img_size=image_size).to(device).train()
    return mae, full


def training_step(model: torch.nn.Module, loss_of: Callable[[], torch.Tensor], *, amp: bool,
                  device: torch.device) -> Step:
    optimizer = torch.optim.SGD(model.parameters(), lr=LEARNING_RATE, momentum=MOMENTUM)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with autocast(device=device, enabled=amp):
            loss = loss_of()
        loss.backward()
        optimizer.step()

    return step


def contenders(mae: torch.nn.Module, full: torch.nn.Module, *, batch: int, image_size: int, amp: bool,
               device: torch.device) -> list[Contender]:
    torch.manual_seed(SEED)
    images = torch.randn(batch, 3, image_size, image_size, device=device)
    labels = torch.randint(0, NUM_CLASSES, (batch,), device=device)
    return [Contender("mae", training_step(mae, lambda: mae(images)["loss"], amp=amp, device=device)),
            Contender("full", training_step(full, lambda: F.cross_entropy(full(images), labels), amp=amp,
                                            device=device))]


def seconds_per_step(contender: Contender, *, steps: int, device: torch.device) -> float:
    train_bench.synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        contender.step()
    train_bench.synchronize(device)
    return (time.perf_counter() - start) / steps


def timed_rounds(pair: list[Contender], *, steps: int, rounds: int, device: torch.device) -> dict[str, list[float]]:
    """Seconds per step of each contender per round, alternating which runs first."""
    times: dict[str, list[float]] = {contender.name: [] for contender in pair}
    for index in range(rounds):
        for contender in (pair if index % 2 == 0 else pair[::-1]):
            times[contender.name].append(seconds_per_step(contender, steps=steps, device=device))
    return times


def forward_gmacs(mae_name: str, *, image_size: int) -> dict[str, float]:
    """Multiply-adds per image of each forward (MAE: masked encoder + decoder + loss)."""
    size = (3, image_size, image_size)
    mae = on_meta(lambda: vislab.create_model(mae_name, img_size=image_size))
    full = on_meta(lambda: vislab.create_model(FULL_TOKEN_MODELS[mae_name], num_classes=NUM_CLASSES,
                                               pos_embed="sincos", img_size=image_size))
    return {"mae": count_gmacs(mae, size), "full": count_gmacs(full, size)}


def measure(mae_name: str, *, args: argparse.Namespace, device: torch.device) -> dict:
    mae, full = build_models(mae_name, image_size=args.image_size, device=device)
    pair = contenders(mae, full, batch=args.batch, image_size=args.image_size, amp=args.amp, device=device)
    for contender in pair:
        for _ in range(args.warmup):
            contender.step()
    times = timed_rounds(pair, steps=args.steps, rounds=args.rounds, device=device)
    medians = {name: statistics.median(values) for name, values in times.items()}
    gmacs = forward_gmacs(mae_name, image_size=args.image_size)
    speed_ratio = medians["full"] / medians["mae"]
    flop_ratio = gmacs["full"] / gmacs["mae"]
    efficiency = speed_ratio / flop_ratio
    return {"full_token_model": FULL_TOKEN_MODELS[mae_name], "seconds_per_step": times,
            "median_seconds_per_step": medians, "forward_gmacs_per_image": gmacs, "speed_ratio": speed_ratio,
            "flop_ratio": flop_ratio, "efficiency": efficiency, "efficiency_goal_met": efficiency >= EFFICIENCY_GOAL}


COLUMNS = (("model", "<13"), ("MAE ms", ">9"), ("full ms", ">9"), ("MAE GMACs", ">10"), ("full GMACs", ">10"),
           ("speed ratio", ">11"), ("FLOP ratio", ">10"), ("speed/FLOP", ">10"))


def table_line(cells: list[str]) -> str:
    return " ".join(f"{cell:{spec}}" for cell, (_, spec) in zip(cells, COLUMNS))


def print_row(name: str, result: dict) -> None:
    ms, gmacs = result["median_seconds_per_step"], result["forward_gmacs_per_image"]
    print(table_line([name, f"{1000 * ms['mae']:.1f}", f"{1000 * ms['full']:.1f}", f"{gmacs['mae']:.2f}",
                      f"{gmacs['full']:.2f}", f"{result['speed_ratio']:.2f}x", f"{result['flop_ratio']:.2f}x",
                      f"{result['efficiency']:.0%}"]), flush=True)


def main() -> None:
    parser = build_parser()
    args = parser.parse_args()
    device = train_bench.resolve_device(args.device, parser=parser)
    precision = "bf16 autocast" if args.amp else "fp32"
    print(f"MAE step (mask 0.75, decoder 512x8) vs full-token step of the same ViT on {device}, {precision}: "
          f"batch {args.batch}, {args.image_size}x{args.image_size}, {args.rounds} rounds x {args.steps} steps")
    print(table_line([title for title, _ in COLUMNS]), flush=True)
    results = {}
    for name in args.models:
        results[name] = measure(name, args=args, device=device)
        print_row(name, results[name])
    for name, result in results.items():
        print(f"{name}: speed ratio / FLOP ratio {result['efficiency']:.0%} "
              f"(goal >= {EFFICIENCY_GOAL:.0%}: {train_bench.met(result['efficiency_goal_met'])})")
    if args.json:
        settings = {"device": str(device), "batch": args.batch, "image_size": args.image_size, "amp": args.amp,
                    "steps": args.steps, "warmup": args.warmup, "rounds": args.rounds}
        train_bench.write_json({**settings, "versions": train_bench.versions(("torchvision", "vislab")),
                                "models": results}, path=args.json)


if __name__ == "__main__":
    main()
