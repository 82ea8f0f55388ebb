"""Video benchmark: vislab's video models and clip decoding against pytorchvideo's.

Training step. One step is forward + cross-entropy loss + backward + SGD step (momentum 0.9) on a
fixed random batch of clips at the registry entry's input size (``--frames`` / ``--crop``
override it for a small run), with 400 classes and no pretrained weights. Each pair is the same
computation on both sides (equal parameter counts are checked before timing):

    vislab slowfast_r50_4x16  vs  pytorchvideo create_slowfast, configured as PySlowFast's
                                  SLOWFAST_4x16_R50 (alpha 8: fusion stride 8, fusion kernel 5,
                                  beta_inv 8, fusion channel ratio 2; 34,480,216 params). The hub's
                                  ``slowfast_r50`` is the 8x8 model (alpha 4, fusion kernel 7):
    vislab slowfast_r50_8x8   vs  pytorchvideo hub slowfast_r50 (an extra pair, not run by default)
    vislab x3d_m              vs  pytorchvideo create_x3d, the builder of hub x3d_m, for the clip
    vislab mvit_b_16x4        vs  pytorchvideo hub mvit_base_16x4, for the clip

The logits of each pair agree once weights are converted (tests/test_video_models.py,
tests/test_mvit_video.py). Two settings of pytorchvideo's heads are changed so that they compute
what vislab's do: SlowFast pools with ``nn.AdaptiveAvgPool3d`` (the hub's fixed
``AvgPool3d((8, 7, 7))`` / ``((32, 7, 7))`` fits only 8x8 clips at 224, where it is the global
mean), and X3D has no softmax (its head applies it in training too, so cross-entropy on it
would be another loss). vislab's SlowFast takes one clip at the Fast rate and picks the Slow
frames itself (``slow_pathway_frames``); pytorchvideo takes ``[slow, fast]``, made from the same
clip by the same function inside the timed step, so both sides do the same work.

Timing is interleaved: every round times vislab and pytorchvideo back to back, alternating which
goes first, and the median clips/s over rounds is reported; the goal is vislab/pytorchvideo
>= 1.0x. Peak memory is the increase over warm-up plus a few steps, as in ``train_bench.py``: on
CUDA from the allocator, on CPU as the growth of peak RSS in a fresh interpreter per model (this
script re-run with hidden flags).

Clip decoding. The moving-shapes set (``generate_moving_shapes``, 64x64 mp4 clips) is written into
a temporary folder and read by vislab's ``VideoListDataset`` with the recipe of
``configs/video/moving_shapes_slowfast.yaml`` (16 frames at stride 2; train: one random clip,
scale jitter and crop; eval: 2 clips x 1 crop), in this process, one video after another. The
reference decodes the same clips with pytorchvideo's ``EncodedVideo`` (PyAV; ``get_clip`` over
each clip's time span, then the clip's frames from it) and applies the dataset's own transform,
so only decoding differs; that both sides give identical tensors is checked first. Throughput is
decoded clips per second (eval: every clip of a video counts), interleaved as above.
pytorchvideo's transforms are not used: they import ``torchvision.transforms.functional_tensor``,
which torchvision no longer has.

Run it on a GPU with::

    python benchmarks/video.py --device cuda --batch 8 --json runs/video.json

or as a quick smoke test on CPU::

    python benchmarks/video.py --device cpu --batch 1 --frames 8 --crop 128 --steps 1 --rounds 3 \\
        --warmup 1 --videos 8
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Callable

import torch
from pytorchvideo.models import hub
from pytorchvideo.models.slowfast import create_slowfast
from pytorchvideo.models.x3d import create_x3d
from torch import nn
from torch.nn import functional as F

import vislab
from vislab.models.backbones.slowfast import slow_pathway_frames
from vislab.models.complexity import count_params
from vislab.models.registry import get_entry

sys.path.insert(0, str(Path(__file__).resolve().parent))
import train_bench  # noqa: E402
import video_ava  # noqa: E402
import video_decoding  # noqa: E402

SEED = 0
SIDES = ("vislab", "pytorchvideo")
KINETICS_CLASSES = 400

Batch = tuple[torch.Tensor, torch.Tensor]


def pytorchvideo_slowfast_4x16(*, frames: int, crop: int) -> nn.Module:
    """PySlowFast's SLOWFAST_4x16_R50 (``MODEL.ALPHA`` 8, ``FUSION_KERNEL_SZ`` 5); with the adaptive
    head pool a SlowFast network does not depend on the clip size."""
    return create_slowfast(model_depth=50, slowfast_channel_reduction_ratio=(8,), slowfast_conv_channel_fusion_ratio=2,
                           slowfast_fusion_conv_kernel_size=(5, 1, 1), slowfast_fusion_conv_stride=(8, 1, 1),
                           head_pool=nn.AdaptiveAvgPool3d)


def pytorchvideo_slowfast_8x8(*, frames: int, crop: int) -> nn.Module:
    return hub.slowfast_r50(pretrained=False, head_pool=nn.AdaptiveAvgPool3d)


def pytorchvideo_x3d_m(*, frames: int, crop: int) -> nn.Module:
    """hub ``x3d_m`` is ``create_x3d`` at 16x224 with its defaults (X3D-M: depth factor 2.2)."""
    return create_x3d(input_clip_length=frames, input_crop_size=crop, depth_factor=2.2, head_activation=None)


def pytorchvideo_mvit_b_16x4(*, frames: int, crop: int) -> nn.Module:
    return hub.mvit_base_16x4(pretrained=False, temporal_size=frames, spatial_size=crop)


@dataclass(frozen=True)
class Pair:
    """A vislab video model and pytorchvideo's build of the same network."""

    model: str
    reference: str
    build_reference: Callable[..., nn.Module]  # keyword-only frames, crop


PAIRS = {pair.model: pair for pair in (
    Pair(model="slowfast_r50_4x16", reference="create_slowfast (4x16)", build_reference=pytorchvideo_slowfast_4x16),
    Pair(model="slowfast_r50_8x8", reference="hub slowfast_r50", build_reference=pytorchvideo_slowfast_8x8),
    Pair(model="x3d_m", reference="create_x3d (x3d_m)", build_reference=pytorchvideo_x3d_m),
    Pair(model="mvit_b_16x4", reference="hub mvit_base_16x4", build_reference=pytorchvideo_mvit_b_16x4),
)}
DEFAULT_MODELS = "slowfast_r50_4x16,x3d_m,mvit_b_16x4"


@dataclass
class Trainee:
    """One side of a pair: the model, its optimizer and how it takes a clip."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    model_input: Callable[[torch.Tensor], Any]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Compare one training step of vislab's SlowFast, X3D and MViT with pytorchvideo's, and "
                    "vislab's clip decoding with pytorchvideo's EncodedVideo: throughput (and peak memory).",
        epilog="example:\n  python benchmarks/video.py --device cuda --batch 8 --json runs/video.json",
        formatter_class=train_bench.HelpFormatter)
    parser.add_argument("--models", type=train_bench.names_from(PAIRS), default=DEFAULT_MODELS,
                        help=f"comma-separated vislab models, from {', '.join(PAIRS)}")
    parser.add_argument("--batch", type=train_bench.positive_int, default=4, help="clips per step")
    parser.add_argument("--frames", type=train_bench.positive_int,
                        help="frames per clip instead of the entry's (SlowFast: at the Fast rate)")
    parser.add_argument("--crop", type=train_bench.positive_int,
                        help="height and width of the clips instead of the entry's")
    parser.add_argument("--steps", type=train_bench.positive_int, default=10, help="timed steps per round")
    parser.add_argument("--warmup", type=train_bench.non_negative_int, default=2,
                        help="untimed steps per model before the first round")
    parser.add_argument("--rounds", type=train_bench.positive_int, default=3,
                        help="interleaved rounds; the median over rounds is reported")
    parser.add_argument("--videos", type=train_bench.positive_int, default=32,
                        help="generated videos per split read in each decoding round")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="auto picks cuda if available, else cpu (decoding always runs on the CPU)")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the results here")
    parser.add_argument("--measure-memory-of", choices=tuple(PAIRS), help=argparse.SUPPRESS)
    parser.add_argument("--memory-side", choices=SIDES, help=argparse.SUPPRESS)
    parser.add_argument("--ava", action="store_true", help="instead: AVA SlowFast R50 detection against "
                        "pytorchvideo's slowfast_r50_detection (benchmarks/video_ava.py; 32x224 clips by default)")
    video_ava.add_arguments(parser)
    return parser


# ---------------------------------------------------------------------------------------------
# training step
# ---------------------------------------------------------------------------------------------

def clip_size(model: str, *, args: argparse.Namespace) -> tuple[int, int]:
    """``(frames, crop)``: the entry's input size unless ``--frames`` / ``--crop`` override it."""
    _, frames, crop, _ = get_entry(model).input_size
    return args.frames or frames, args.crop or crop


def build_vislab(model: str, *, frames: int, crop: int) -> nn.Module:
    """The registry model; MViT's position embeddings are sized for the clip, like pytorchvideo's."""
    sized = {"num_frames": frames, "img_size": crop} if get_entry(model).family == "mvit_video" else {}
    return vislab.create_model(model, num_classes=KINETICS_CLASSES, **sized)


def model_input(model: str, *, side: str) -> Callable[[torch.Tensor], Any]:
    """The clip as the side's model takes it: pytorchvideo's SlowFast takes ``[slow, fast]``."""
    entry = get_entry(model)
    if side == "vislab" or entry.family != "slowfast":
        return lambda clip: clip
    return lambda clip: [slow_pathway_frames(clip, alpha=entry.defaults["alpha"]), clip]


def build_trainee(pair: Pair, *, side: str, frames: int, crop: int, device: torch.device) -> Trainee:
    torch.manual_seed(SEED)
    if side == "vislab":
        model = build_vislab(pair.model, frames=frames, crop=crop)
    else:
        model = pair.build_reference(frames=frames, crop=crop)
    model.to(device).train()
    return Trainee(model=model, optimizer=train_bench.build_optimizer("sgd", model=model),
                   model_input=model_input(pair.model, side=side))


def make_batch(*, batch: int, frames: int, crop: int, device: torch.device) -> Batch:
    torch.manual_seed(SEED)
    clips = torch.randn(batch, 3, frames, crop, crop)
    labels = torch.randint(0, KINETICS_CLASSES, (batch,))
    return clips.to(device), labels.to(device)


def train_steps(trainee: Trainee, batch: Batch, *, steps: int) -> None:
    clips, labels = batch
    for _ in range(steps):
        trainee.optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(trainee.model(trainee.model_input(clips)), labels)
        loss.backward()
        trainee.optimizer.step()


def clips_per_second(trainee: Trainee, batch: Batch, *, steps: int, device: torch.device) -> float:
    elapsed = train_bench.elapsed_seconds(lambda: train_steps(trainee, batch, steps=steps), device=device)
    return steps * len(batch[0]) / elapsed


def check_same_network(pair: Pair, trainees: dict[str, Trainee]) -> dict[str, int]:
    params = {side: count_params(trainee.model) for side, trainee in trainees.items()}
    if len(set(params.values())) != 1:
        raise RuntimeError(f"{pair.model} and pytorchvideo {pair.reference} are not the same network: "
                           f"{params['vislab']:,} vs {params['pytorchvideo']:,} parameters")
    return params


def memory_command(model: str, *, side: str, frames: int, crop: int, args: argparse.Namespace) -> list[str]:
    """This script in child mode, training one side on CPU (see ``report_rss_increase``)."""
    return [sys.executable, str(Path(__file__).resolve()), "--measure-memory-of", model, "--memory-side", side,
            "--device", "cpu", "--batch", str(args.batch), "--frames", str(frames), "--crop", str(crop),
            "--warmup", str(args.warmup)]


def report_rss_increase(args: argparse.Namespace) -> None:
    """Child mode: train one side of ``--measure-memory-of`` on CPU and print its peak-RSS increase as JSON."""
    device = torch.device("cpu")
    frames, crop = clip_size(args.measure_memory_of, args=args)
    trainee = build_trainee(PAIRS[args.measure_memory_of], side=args.memory_side, frames=frames, crop=crop,
                            device=device)
    batch = make_batch(batch=args.batch, frames=frames, crop=crop, device=device)
    before = train_bench.peak_rss_kib()
    train_steps(trainee, batch, steps=args.warmup + train_bench.MEMORY_STEPS)
    print(json.dumps({"model": args.measure_memory_of, "side": args.memory_side,
                      "peak_rss_increase_kib": train_bench.peak_rss_kib() - before}))


def peak_memory_mib(pair: Pair, trainees: dict[str, Trainee], batch: Batch, *, frames: int, crop: int,
                    args: argparse.Namespace, device: torch.device) -> dict[str, float]:
    steps = args.warmup + train_bench.MEMORY_STEPS
    if device.type == "cuda":
        return {side: train_bench.cuda_peak_increase_mib(partial(train_steps, trainee, batch, steps=steps),
                                                         device=device)
                for side, trainee in trainees.items()}
    return {side: train_bench.child_peak_mib(memory_command(pair.model, side=side, frames=frames, crop=crop,
                                                            args=args))
            for side in SIDES}


def measure_pair(pair: Pair, *, args: argparse.Namespace, device: torch.device) -> dict:
    frames, crop = clip_size(pair.model, args=args)
    trainees = {side: build_trainee(pair, side=side, frames=frames, crop=crop, device=device) for side in SIDES}
    params = check_same_network(pair, trainees)
    batch = make_batch(batch=args.batch, frames=frames, crop=crop, device=device)
    memory = peak_memory_mib(pair, trainees, batch, frames=frames, crop=crop, args=args, device=device)
    for trainee in trainees.values():
        train_steps(trainee, batch, steps=args.warmup)
    rates = train_bench.interleaved_rounds(
        {side: partial(clips_per_second, trainee, batch, steps=args.steps, device=device)
         for side, trainee in trainees.items()}, rounds=args.rounds)
    return {"reference": f"pytorchvideo {pair.reference}", "clip": [3, frames, crop, crop], "params": params["vislab"],
            **train_bench.median_ratio(rates), "peak_memory_mib": memory,
            "memory_ratio": memory["vislab"] / memory["pytorchvideo"]}


# ---------------------------------------------------------------------------------------------
# report
# ---------------------------------------------------------------------------------------------

MODEL_COLUMNS = (("model", "<18"), ("pytorchvideo", "<23"), ("clip", "<12"), ("vislab clip/s", ">13"),
                 ("ref clip/s", ">10"), ("vislab MiB", ">10"), ("ref MiB", ">9"), ("clip/s ratio", ">12"),
                 ("MiB ratio", ">9"))
DATA_COLUMNS = (("decoding", "<9"), ("videos", ">6"), ("clips", ">5"), ("vislab clip/s", ">13"),
                ("ref clip/s", ">10"), ("clip/s ratio", ">12"))


def table_line(cells: list[str], columns: tuple[tuple[str, str], ...]) -> str:
    return " ".join(f"{cell:{spec}}" for cell, (_, spec) in zip(cells, columns))


def print_header(columns: tuple[tuple[str, str], ...]) -> None:
    print(table_line([title for title, _ in columns], columns), flush=True)


def print_model_row(model: str, result: dict) -> None:
    medians, memory = result["median_clips_per_second"], result["peak_memory_mib"]
    print(table_line([model, result["reference"].removeprefix("pytorchvideo "), "x".join(map(str, result["clip"][1:])),
                      f"{medians['vislab']:.2f}", f"{medians['pytorchvideo']:.2f}", f"{memory['vislab']:.1f}",
                      f"{memory['pytorchvideo']:.1f}", f"{result['throughput_ratio']:.2f}x",
                      f"{result['memory_ratio']:.2f}x"], MODEL_COLUMNS), flush=True)


def print_data_row(mode: str, result: dict) -> None:
    medians = result["median_clips_per_second"]
    reference = f"{medians['pytorchvideo']:.1f}" if "pytorchvideo" in medians else "n/a"
    ratio = f"{result['throughput_ratio']:.2f}x" if "throughput_ratio" in result else "n/a"
    print(table_line([mode, str(result["videos"]), str(result["videos"] * result["clips_per_video"]),
                      f"{medians['vislab']:.1f}", reference, ratio], DATA_COLUMNS), flush=True)


def print_goals(results: dict[str, dict], *, what: str) -> None:
    for name, result in results.items():
        if "throughput_ratio" in result:
            print(f"{what} {name}: vislab/pytorchvideo {result['throughput_ratio']:.2f}x "
                  f"(goal >= 1.00x: {train_bench.met(result['throughput_goal_met'])})")
        else:
            print(f"{what} {name}: no reference ({result['reference_unavailable']})")


def main() -> None:
    parser = build_parser()
    args = parser.parse_args()
    if args.measure_memory_of:
        report_rss_increase(args)
        return
    device = train_bench.resolve_device(args.device, parser=parser)
    if args.ava:
        args.frames, args.crop = args.frames or 32, args.crop or 224
        result = video_ava.run(args, device=device)
        if args.json:
            train_bench.write_json({**result, "versions": train_bench.versions(("pytorchvideo", "vislab"))},
                                   path=args.json)
        return
    print(f"video train step (forward + cross-entropy + backward + SGD step) on {device}: batch {args.batch}, "
          f"{args.rounds} rounds x {args.steps} steps")
    print_header(MODEL_COLUMNS)
    models = {}
    for model in args.models:
        models[model] = measure_pair(PAIRS[model], args=args, device=device)
        print_model_row(model, models[model])
    print(f"clip decoding on cpu, one process: generated 64x64 moving-shapes mp4s, {args.rounds} rounds")
    print_header(DATA_COLUMNS)
    decoding = video_decoding.measure_decoding(videos=args.videos, rounds=args.rounds)
    for mode, result in decoding.items():
        print_data_row(mode, result)
    print_goals(models, what="train step")
    print_goals(decoding, what="decoding")
    if args.json:
        settings = {"device": str(device), "batch": args.batch, "frames": args.frames, "crop": args.crop,
                    "steps": args.steps, "warmup": args.warmup, "rounds": args.rounds, "videos": args.videos}
        train_bench.write_json({**settings, "versions": train_bench.versions(("torchvision", "pytorchvideo", "av",
                                                                              "vislab")),
                                "models": models, "decoding": decoding}, path=args.json)


if __name__ == "__main__":
    main()
