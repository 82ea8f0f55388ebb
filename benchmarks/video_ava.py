"""AVA action-detection benchmark: vislab's ``ava_slowfast_r50_8x8`` against pytorchvideo's
``slowfast_r50_detection`` (``create_slowfast_with_roi_head``), the same network with the same
weights, clips and boxes. Run as ``python benchmarks/video.py --ava`` (or this file directly).

pytorchvideo's model is built with random weights (seed 0) and converted into vislab's with
``vislab.convert`` (``roi_aligned=False``, the RoIAlign pytorchvideo uses); the two give the same
probabilities, checked before timing. pytorchvideo averages time with fixed kernels (8 and 32
frames for an 8x8 clip); for another ``--frames`` its kernels are set to the clip's length, the
global temporal mean vislab's head takes. vislab's SlowFast takes one clip and picks the Slow
frames itself; pytorchvideo's ``[slow, fast]`` pair is made from the clip by the same function
inside the timed step.

Training step: forward + binary cross-entropy over the 80 actions of every box + backward + SGD
step (momentum 0.9). pytorchvideo's head applies the sigmoid in training too, so its loss is BCE
on probabilities (PySlowFast's ``BCELoss``); vislab's is BCE on logits, the same value computed
stably. Inference: the eval-mode forward under ``no_grad``. Clips per second are timed in
interleaved rounds (alternating which side goes first) and the medians compared: goal >= 1.0x.
Training peak memory is measured as in ``video.py`` (CUDA allocator, or peak RSS of a child
process on CPU): goal <= 1.0x.

    python benchmarks/video.py --ava --device cuda --batch 8 --json runs/video_ava.json
    python benchmarks/video.py --ava --device cpu --batch 2 --frames 32 --crop 160 --steps 2 --rounds 3
"""
from __future__ import annotations

import argparse
import json
import sys
from functools import partial
from pathlib import Path
from typing import Callable

import torch
from pytorchvideo.models.slowfast import create_slowfast_with_roi_head
from torch import nn
from torch.nn import functional as F

import vislab
from vislab.convert.pytorchvideo import pytorchvideo_slowfast_detection
from vislab.models.backbones.slowfast import slow_pathway_frames

sys.path.insert(0, str(Path(__file__).resolve().parent))
import train_bench  # noqa: E402

SEED = 0
SIDES = ("vislab", "pytorchvideo")
AVA_CLASSES = 80
ALPHA = 4  # SlowFast 8x8


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--boxes-per-clip", type=train_bench.positive_int, default=4)


def build_models(*, frames: int) -> dict[str, nn.Module]:
    torch.manual_seed(SEED)
    reference = create_slowfast_with_roi_head(head_pool_kernel_sizes=((frames // ALPHA, 1, 1), (frames, 1, 1)))
    with torch.no_grad():  # non-trivial norm statistics, so that a mis-mapped norm shows
        for module in reference.modules():
            if isinstance(module, nn.BatchNorm3d):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
    model = vislab.create_model("ava_slowfast_r50_8x8", num_classes=AVA_CLASSES, roi_aligned=False)
    model.load_state_dict(pytorchvideo_slowfast_detection(reference.state_dict()), strict=True)
    return {"vislab": model, "pytorchvideo": reference}


def model_input(side: str) -> Callable[[torch.Tensor], object]:
    if side == "vislab":
        return lambda clip: clip
    return lambda clip: [slow_pathway_frames(clip, alpha=ALPHA), clip]


def make_inputs(*, batch: int, frames: int, crop: int, boxes_per_clip: int,
                device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Clips, ``[K, 5]`` boxes (batch index, x1, y1, x2, y2 in pixels) and multi-hot targets."""
    generator = torch.Generator().manual_seed(SEED)
    clips = torch.randn(batch, 3, frames, crop, crop, generator=generator)
    corners = torch.rand(batch * boxes_per_clip, 2, 2, generator=generator) * crop
    boxes = torch.cat([torch.arange(batch).repeat_interleave(boxes_per_clip)[:, None].float(),
                       corners.min(dim=1).values, corners.max(dim=1).values], dim=1)
    targets = (torch.rand(len(boxes), AVA_CLASSES, generator=generator) < 0.05).float()
    return clips.to(device), boxes.to(device), targets.to(device)


def check_same_outputs(models: dict[str, nn.Module], inputs) -> float:
    clips, boxes, _ = inputs
    with torch.no_grad():
        outputs = {side: model.eval()(model_input(side)(clips), boxes) for side, model in models.items()}
    difference = float((outputs["vislab"] - outputs["pytorchvideo"]).abs().max())
    if difference > 1e-4:
        raise RuntimeError(f"the two detectors disagree by {difference:.2e}: not the same network")
    return difference


def train_steps(side: str, model: nn.Module, optimizer: torch.optim.Optimizer, inputs, *, steps: int) -> None:
    clips, boxes, targets = inputs
    model.train()
    for _ in range(steps):
        optimizer.zero_grad(set_to_none=True)
        scores = model(model_input(side)(clips), boxes)
        loss = (F.binary_cross_entropy_with_logits(scores, targets) if side == "vislab"
                else F.binary_cross_entropy(scores, targets))
        loss.backward()
        optimizer.step()


def inference_steps(side: str, model: nn.Module, inputs, *, steps: int) -> None:
    clips, boxes, _ = inputs
    model.eval()
    with torch.no_grad():
        for _ in range(steps):
            model(model_input(side)(clips), boxes)


def rate(run: Callable[[], None], *, clips: int, device: torch.device) -> float:
    return clips / train_bench.elapsed_seconds(run, device=device)


def child_command(side: str, args: argparse.Namespace) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), "--measure-memory-of", side, "--device", "cpu",
            "--batch", str(args.batch), "--frames", str(args.frames), "--crop", str(args.crop),
            "--boxes-per-clip", str(args.boxes_per_clip), "--warmup", str(args.warmup)]


def report_rss_increase(args: argparse.Namespace) -> None:
    """Child mode: train one side on CPU and print its peak-RSS increase as JSON."""
    side, device = args.measure_memory_of, torch.device("cpu")
    model = build_models(frames=args.frames)[side]
    inputs = make_inputs(batch=args.batch, frames=args.frames, crop=args.crop, boxes_per_clip=args.boxes_per_clip,
                         device=device)
    optimizer = train_bench.build_optimizer("sgd", model=model)
    before = train_bench.peak_rss_kib()
    train_steps(side, model, optimizer, inputs, steps=args.warmup + train_bench.MEMORY_STEPS)
    print(json.dumps({"side": side, "peak_rss_increase_kib": train_bench.peak_rss_kib() - before}))


def peak_memory(models, optimizers, inputs, *, args: argparse.Namespace, device: torch.device) -> dict[str, float]:
    steps = args.warmup + train_bench.MEMORY_STEPS
    if device.type == "cuda":
        return {side: train_bench.cuda_peak_increase_mib(
            partial(train_steps, side, models[side], optimizers[side], inputs, steps=steps), device=device)
            for side in SIDES}
    return {side: train_bench.child_peak_mib(child_command(side, args)) for side in SIDES}


def run(args: argparse.Namespace, *, device: torch.device) -> dict:
    """Measure, print and return the comparison (``args``: batch, frames, crop, boxes_per_clip,
    steps, warmup, rounds)."""
    models = {side: model.to(device) for side, model in build_models(frames=args.frames).items()}
    inputs = make_inputs(batch=args.batch, frames=args.frames, crop=args.crop, boxes_per_clip=args.boxes_per_clip,
                         device=device)
    difference = check_same_outputs(models, inputs)
    optimizers = {side: train_bench.build_optimizer("sgd", model=model) for side, model in models.items()}
    memory = peak_memory(models, optimizers, inputs, args=args, device=device)
    for side in SIDES:
        train_steps(side, models[side], optimizers[side], inputs, steps=args.warmup)
    clips = args.steps * args.batch
    training = train_bench.median_ratio(train_bench.interleaved_rounds(
        {side: partial(rate, partial(train_steps, side, models[side], optimizers[side], inputs, steps=args.steps),
                       clips=clips, device=device) for side in SIDES}, rounds=args.rounds))
    inference = train_bench.median_ratio(train_bench.interleaved_rounds(
        {side: partial(rate, partial(inference_steps, side, models[side], inputs, steps=args.steps),
                       clips=clips, device=device) for side in SIDES}, rounds=args.rounds))
    result = {"clip": [3, args.frames, args.crop, args.crop], "batch": args.batch,
              "boxes_per_clip": args.boxes_per_clip, "max_probability_difference": difference,
              "train": training, "inference": inference, "peak_memory_mib": memory,
              "memory_ratio": memory["vislab"] / memory["pytorchvideo"]}
    print(f"AVA SlowFast R50 8x8 detection on {device}: batch {args.batch} x {args.boxes_per_clip} boxes, clip "
          f"{args.frames}x{args.crop}x{args.crop}, {args.rounds} rounds x {args.steps} steps "
          f"(outputs agree within {difference:.1e})")
    for name, part in (("train step", training), ("inference", inference)):
        medians = part["median_clips_per_second"]
        print(f"  {name:10} vislab {medians['vislab']:.2f} clip/s, pytorchvideo {medians['pytorchvideo']:.2f} clip/s: "
              f"{part['throughput_ratio']:.2f}x (goal >= 1.00x: {train_bench.met(part['throughput_goal_met'])})")
    print(f"  train peak memory vislab {memory['vislab']:.0f} MiB, pytorchvideo {memory['pytorchvideo']:.0f} MiB: "
          f"{result['memory_ratio']:.2f}x (goal <= 1.00x: {train_bench.met(result['memory_ratio'] <= 1.0)})")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=train_bench.positive_int, default=2)
    parser.add_argument("--frames", type=train_bench.positive_int, default=32)
    parser.add_argument("--crop", type=train_bench.positive_int, default=224)
    parser.add_argument("--steps", type=train_bench.positive_int, default=3)
    parser.add_argument("--warmup", type=train_bench.non_negative_int, default=1)
    parser.add_argument("--rounds", type=train_bench.positive_int, default=3)
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--json", type=Path, metavar="PATH")
    parser.add_argument("--measure-memory-of", choices=SIDES, help=argparse.SUPPRESS)
    add_arguments(parser)
    args = parser.parse_args()
    if args.measure_memory_of:
        report_rss_increase(args)
        return
    result = run(args, device=train_bench.resolve_device(args.device, parser=parser))
    if args.json:
        train_bench.write_json({**result, "versions": train_bench.versions(("pytorchvideo", "vislab"))}, path=args.json)


if __name__ == "__main__":
    main()
