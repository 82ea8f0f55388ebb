"""ViTDet benchmark: vislab's ViT-B trunk + simple feature pyramid against Hugging Face
``transformers``' ``VitDetBackbone`` (a line-for-line port of detectron2's ViT) followed by the
same pyramid module, with the same weights.

Both trunks are ViTDet-B (768 wide, 12 blocks, windows of 14 tokens with global blocks 2, 5, 8,
11, decomposed relative positions, the 224-pixel position table resized to the input); the
transformers trunk gets vislab's weights renamed, so both compute the same maps (the test suite
holds them equal). One iteration is forward + the mean square of the five pyramid maps + backward
(no optimizer: the trunks are what is compared), under bf16 autocast as ViTDet trains
(``--no-amp`` for float32). The input is one random image of 512x512 on a CPU (the
relative-position tables are built for it) and 1024x1024 on CUDA (ViTDet's size).

Timing is interleaved: every round times vislab and transformers back to back, alternating which
goes first, and the median images/s over rounds is reported. Peak memory is the increase over
warm-up plus a few iterations: on CUDA from the allocator, on CPU as the growth of peak RSS in a
fresh subprocess per library (this script re-invoked with hidden flags), as ``detection.py``
measures it. The goal is vislab/transformers >= 1.2x throughput and <= 0.9x peak memory.

    python benchmarks/vitdet.py --device cpu
    python benchmarks/vitdet.py --device cuda --json runs/vitdet.json
"""
from __future__ import annotations

import argparse
import gc
import json
import re
import sys
from functools import partial
from pathlib import Path
from typing import Callable

import torch
from torch import nn

import vislab

# benchmarks/ is not a package: put this folder on sys.path so that its shared module imports
# however the script is started (e.g. also under `python -P` or when loaded by file path).
sys.path.insert(0, str(Path(__file__).resolve().parent))
import train_bench  # noqa: E402

LIBRARIES = ("vislab", "transformers")
SEED = 0
WINDOW_BLOCKS = (0, 1, 3, 4, 6, 7, 9, 10)
# vislab trunk keys -> transformers VitDet keys
TRANSFORMERS_RULES = ((r"^patch_embed\.", "embeddings.projection."),
                      (r"^pos_embed$", "embeddings.position_embeddings"),
                      (r"^blocks\.(\d+)\.attn\.", r"encoder.layer.\1.attention."),
                      (r"^blocks\.", "encoder.layer."))


class TrunkAndPyramid(nn.Module):
    """A trunk giving its last map (``forward_map``) and the pyramid built on it."""

    def __init__(self, forward_map: Callable[[torch.Tensor], torch.Tensor], trunk: nn.Module, pyramid: nn.Module):
        super().__init__()
        self.trunk, self.pyramid, self.forward_map = trunk, pyramid, forward_map

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.pyramid({"last": self.forward_map(images)})


def build(library: str, *, image_size: int) -> nn.Module:
    """ViTDet-B trunk + simple pyramid of ``library`` for ``image_size`` inputs."""
    torch.manual_seed(SEED)
    detector = vislab.create_model("mask_rcnn_vitdet_b", img_size=image_size, drop_path_rate=0.0)
    trunk, pyramid = detector.backbone, detector.fpn
    with torch.no_grad():  # non-zero relative positions, so both compute them
        for name, table in trunk.named_parameters():
            if ".rel_pos_" in name:
                table.normal_(0, 0.02)
    if library == "vislab":
        return TrunkAndPyramid(lambda images: trunk.forward_features(images)["last"], trunk, pyramid)
    import transformers  # a dev dependency, imported only here

    config = transformers.VitDetConfig(hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                                       image_size=image_size, pretrain_image_size=224, patch_size=16,
                                       window_size=14, window_block_indices=list(WINDOW_BLOCKS),
                                       use_relative_position_embeddings=True, out_features=["stage12"])
    theirs = transformers.VitDetBackbone(config)
    renamed = {}
    for key, value in trunk.state_dict().items():
        for pattern, replacement in TRANSFORMERS_RULES:
            key = re.sub(pattern, replacement, key)
        renamed[key] = value
    theirs.load_state_dict(renamed, strict=True)
    return TrunkAndPyramid(lambda images: theirs(images).feature_maps[0], theirs, pyramid)


def training_step(model: nn.Module, images: torch.Tensor, *, amp: bool) -> Callable[[], None]:
    model.train()

    def step() -> None:
        model.zero_grad(set_to_none=True)
        with torch.autocast(images.device.type, dtype=torch.bfloat16, enabled=amp):
            loss = sum(level.float().square().mean() for level in model(images).values())
        loss.backward()

    return step


def make_images(image_size: int, device: torch.device) -> torch.Tensor:
    return torch.randn(1, 3, image_size, image_size, generator=torch.Generator().manual_seed(SEED)).to(device)


def run_steps(step: Callable[[], None], *, steps: int) -> None:
    for _ in range(steps):
        step()


def report_rss_increase(*, library: str, image_size: int, warmup: int, amp: bool) -> None:
    """Child mode: train ``library``'s trunk on CPU and print its peak-RSS increase as JSON."""
    step = training_step(build(library, image_size=image_size), make_images(image_size, torch.device("cpu")), amp=amp)
    gc.collect()
    Path("/proc/self/clear_refs").write_text("5")  # peak RSS from here
    before = train_bench.peak_rss_kib()
    run_steps(step, steps=warmup + train_bench.MEMORY_STEPS)
    print(json.dumps({"library": library, "peak_rss_increase_kib": train_bench.peak_rss_kib() - before}))


def peak_memory_mib(args: argparse.Namespace, *, image_size: int, device: torch.device) -> dict[str, float]:
    if device.type == "cuda":
        images = make_images(image_size, device)
        return {library: train_bench.cuda_peak_increase_mib(
            partial(run_steps, training_step(build(library, image_size=image_size).to(device), images, amp=args.amp),
                    steps=args.warmup + train_bench.MEMORY_STEPS), device=device) for library in LIBRARIES}
    return {library: train_bench.child_peak_mib(
        [sys.executable, str(Path(__file__).resolve()), "--measure-memory-of", library,
         "--image-size", str(image_size), "--warmup", str(args.warmup), *(["--amp"] if args.amp else [])])
            for library in LIBRARIES}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=train_bench.HelpFormatter)
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--image-size", type=train_bench.positive_int, default=None,
                        help="input side; default 512 on a CPU, 1024 on CUDA")
    parser.add_argument("--steps", type=train_bench.positive_int, default=2, help="timed steps per round")
    parser.add_argument("--warmup", type=train_bench.non_negative_int, default=1)
    parser.add_argument("--rounds", type=train_bench.positive_int, default=3)
    parser.add_argument("--amp", action=argparse.BooleanOptionalAction, default=True,
                        help="bf16 autocast, as ViTDet trains (--no-amp: float32)")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the results here")
    parser.add_argument("--measure-memory-of", choices=LIBRARIES, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.measure_memory_of:
        report_rss_increase(library=args.measure_memory_of, image_size=args.image_size, warmup=args.warmup,
                            amp=args.amp)
        return 0
    device = train_bench.resolve_device(args.device, parser=parser)
    image_size = args.image_size or (1024 if device.type == "cuda" else 512)
    memory = peak_memory_mib(args, image_size=image_size, device=device)
    images = make_images(image_size, device)
    steps = {library: training_step(build(library, image_size=image_size).to(device), images, amp=args.amp)
             for library in LIBRARIES}
    for step in steps.values():
        run_steps(step, steps=args.warmup)
    throughput = train_bench.interleaved_rounds(
        {library: (lambda s=step: args.steps / train_bench.elapsed_seconds(partial(run_steps, s, steps=args.steps),
                                                                          device=device))
         for library, step in steps.items()}, rounds=args.rounds)
    result = train_bench.compare(throughput=throughput, memory=memory, candidate="vislab", baseline="transformers")
    speed, memory_ratio = result["throughput_ratio"], result["memory_ratio"]
    precision = "bf16 autocast" if args.amp else "float32"
    print(f"ViTDet-B trunk + simple pyramid, forward + backward at {image_size}x{image_size} on {device} "
          f"({precision}): "
          f"vislab {result['median_images_per_second']['vislab']:.3f} img/s, transformers "
          f"{result['median_images_per_second']['transformers']:.3f} img/s -> {speed:.2f}x "
          f"(goal >= 1.2x: {train_bench.met(speed >= 1.2)}); peak memory {memory['vislab']:.0f} vs "
          f"{memory['transformers']:.0f} MiB -> {memory_ratio:.2f}x (goal <= 0.9x: {train_bench.met(memory_ratio <= 0.9)})")
    if args.json:
        train_bench.write_json({"image_size": image_size, "device": str(device), "amp": args.amp, **result,
                                "versions": train_bench.versions(("transformers",))}, path=args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
