"""Detection benchmark: vislab's Mask R-CNN R50-FPN and FCOS R50-FPN against torchvision's.

Each pair does the same computation on the same input. torchvision's ``maskrcnn_resnet50_fpn`` and
``fcos_resnet50_fpn`` are built the way they are for fine-tuning from pretrained weights:
FrozenBatchNorm2d in the ResNet and its stem and layer1 frozen (``trainable_backbone_layers=3``,
vislab's ``freeze_at=2``). vislab's ``mask_rcnn_r50_fpn`` is built with torchvision's numerics
(``TORCHVISION_RCNN_OPTIONS``, 2000 proposals per image in training); both vislab models get
torchvision's weights through ``vislab.convert.torchvision_detection``, so both give the same
detections. torchvision's parts are called directly (backbone, RPN, ROI heads; FCOS's head,
anchors, loss and post-processing), without its GeneralizedRCNNTransform (resizing,
normalisation), which vislab leaves to the data pipeline.

The input is 2 random images of 384x512 with 3 random boxes each (masks fill the boxes). One
training iteration is forward + the sum of the losses + backward + SGD step (momentum 0.9);
inference is an eval-mode forward under ``torch.no_grad``. Denormal floats are flushed to zero.
Timing is interleaved: every round times vislab and torchvision back to back, alternating which
goes first, and the median images/s over rounds is reported. Peak memory is the increase over
warm-up plus a few iterations: on CUDA from the allocator, on CPU as the growth of peak RSS in a
fresh subprocess per model (this script re-invoked with hidden flags). The machinery is shared
with ``train_step.py`` and lives in ``train_bench.py``.

Run it with ``make benchmark``, or e.g.::

    python benchmarks/detection.py --device cuda --json runs/detection.json
    python benchmarks/detection.py --device cpu --models fcos --steps 2 --rounds 3 --warmup 1

The goal is vislab/torchvision >= 1.0x throughput and <= 1.0x peak memory, for training and for
inference, for each model.
"""
from __future__ import annotations

import argparse
import gc
import json
import sys
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable

import torch
from torch import nn
from torchvision.models import resnet50
from torchvision.models.detection import FCOS, MaskRCNN
from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor, resnet_fpn_backbone
from torchvision.models.detection.image_list import ImageList
from torchvision.ops import FrozenBatchNorm2d
from torchvision.ops.feature_pyramid_network import LastLevelP6P7

import vislab
from vislab.convert.torchvision_detection import TORCHVISION_RCNN_OPTIONS, torchvision_fcos, torchvision_rcnn
from vislab.weights import load_state_dict

# benchmarks/ is not a package: put this folder on sys.path so that its shared module imports
# however the script is started (e.g. also under `python -P` or when loaded by file path).
sys.path.insert(0, str(Path(__file__).resolve().parent))
import train_bench  # noqa: E402

LIBRARIES = ("vislab", "torchvision")
MODES = ("train", "inference")
MODELS = ("mask_rcnn", "fcos")
NUM_IMAGES = 2
IMAGE_SIZE = (384, 512)
BOXES_PER_IMAGE = 3
BOX_SIDES = (32, 128)  # smallest and largest side of a target box, in pixels
NUM_CLASSES = 90  # COCO's category ids; torchvision adds a background class in front
SEED = 0
# Mask R-CNN's 0.02 for 16 images, scaled linearly to 2 (Goyal et al., 2017, section 2.1)
LEARNING_RATE = 0.0025
MOMENTUM = 0.9
# Std of the class-score weights. A trained detector keeps up to 100 detections per image above
# score 0.05; torchvision's default init gives near-uniform scores (about 1/91) and none, so
# inference would never reach the mask head.
CLASS_SCORE_STD = 0.1

Step = Callable[[], None]


@dataclass(frozen=True)
class Scene:
    """The input of every iteration; ``targets`` use vislab's labels (0..89)."""

    images: torch.Tensor
    image_sizes: list[tuple[int, int]]
    targets: list[dict[str, torch.Tensor]]

    def to(self, device: torch.device) -> Scene:
        return Scene(images=self.images.to(device), image_sizes=self.image_sizes,
                     targets=[{key: value.to(device) for key, value in target.items()}
                              for target in self.targets])


@dataclass
class Contender:
    """One library's model, set up for one mode, with its iteration."""

    library: str
    model: nn.Module
    step: Step


def make_scene() -> Scene:
    """Random images with random boxes of a random class each; each mask fills its box."""
    generator = torch.Generator().manual_seed(SEED)
    height, width = IMAGE_SIZE
    smallest, largest = BOX_SIDES
    extent = torch.tensor([width, height])
    targets = []
    for _ in range(NUM_IMAGES):
        sides = smallest + torch.rand(BOXES_PER_IMAGE, 2, generator=generator) * (largest - smallest)
        corners = torch.rand(BOXES_PER_IMAGE, 2, generator=generator) * (extent - sides)
        boxes = torch.cat((corners, corners + sides), dim=1).round()
        masks = torch.zeros(BOXES_PER_IMAGE, height, width, dtype=torch.uint8)
        for mask, (x0, y0, x1, y1) in zip(masks, boxes.long().tolist()):
            mask[y0:y1, x0:x1] = 1
        labels = torch.randint(0, NUM_CLASSES, (BOXES_PER_IMAGE,), generator=generator)
        targets.append({"boxes": boxes, "labels": labels, "masks": masks})
    images = torch.randn(NUM_IMAGES, 3, height, width, generator=generator)
    return Scene(images=images, image_sizes=[IMAGE_SIZE] * NUM_IMAGES, targets=targets)


@torch.no_grad()
def calibrate_frozen_statistics(trunk: nn.Module, *, images: torch.Tensor) -> None:
    """Set each FrozenBatchNorm2d's mean and variance to those of its input on ``images``, layer
    by layer in forward order. Pretrained statistics keep activations normalised; the identity
    statistics of a randomly initialised trunk let them grow about 60x through ResNet-50, and
    training then diverges within a few iterations."""

    def take_statistics(norm: FrozenBatchNorm2d, inputs: tuple[torch.Tensor]) -> None:
        norm.running_mean.copy_(inputs[0].mean(dim=(0, 2, 3)))
        norm.running_var.copy_(inputs[0].var(dim=(0, 2, 3)))

    hooks = [module.register_forward_pre_hook(take_statistics) for module in trunk.modules()
             if isinstance(module, FrozenBatchNorm2d)]
    trunk(images)
    for hook in hooks:
        hook.remove()


def build_torchvision_mask_rcnn(*, images: torch.Tensor) -> MaskRCNN:
    """``maskrcnn_resnet50_fpn`` as built for fine-tuning pretrained weights (FrozenBN, 3
    trainable stages; without weights torchvision would use BatchNorm2d and train all five),
    its norms calibrated on ``images`` and its class scores made confident."""
    torch.manual_seed(SEED)
    backbone = resnet_fpn_backbone(backbone_name="resnet50", weights=None,
                                   norm_layer=FrozenBatchNorm2d, trainable_layers=3)
    model = MaskRCNN(backbone, num_classes=NUM_CLASSES + 1)
    calibrate_frozen_statistics(model.backbone.body, images=images)
    with torch.no_grad():
        model.roi_heads.box_predictor.cls_score.weight.normal_(0, CLASS_SCORE_STD)
    return model


def build_torchvision_fcos(*, images: torch.Tensor) -> FCOS:
    """``fcos_resnet50_fpn`` as built for fine-tuning pretrained weights (FrozenBN, 3 trainable
    stages), its norms calibrated on ``images``, and class logits without the 0.01 prior, so that
    inference keeps and suppresses candidates as a trained detector does."""
    torch.manual_seed(SEED)
    trunk = resnet50(weights=None, norm_layer=FrozenBatchNorm2d)
    backbone = _resnet_fpn_extractor(trunk, 3, returned_layers=[2, 3, 4], extra_blocks=LastLevelP6P7(256, 256))
    model = FCOS(backbone, num_classes=NUM_CLASSES + 1)
    calibrate_frozen_statistics(model.backbone.body, images=images)
    with torch.no_grad():
        model.head.classification_head.cls_logits.weight.normal_(0, CLASS_SCORE_STD)
        model.head.classification_head.cls_logits.bias.zero_()
    return model


def build_models(model: str, *, images: torch.Tensor) -> dict[str, nn.Module]:
    """Both ``model``s by library, with the same weights (torchvision's, converted for vislab)."""
    if model == "mask_rcnn":
        theirs = build_torchvision_mask_rcnn(images=images)
        ours = vislab.create_model("mask_rcnn_r50_fpn", num_classes=NUM_CLASSES, **TORCHVISION_RCNN_OPTIONS,
                                   rpn_post_nms_topk=(2000, 1000))
        converted = torchvision_rcnn(theirs.state_dict())
    else:
        theirs = build_torchvision_fcos(images=images)
        ours = vislab.create_model("fcos_r50_fpn", num_classes=NUM_CLASSES)
        converted = torchvision_fcos(theirs.state_dict())
    load_state_dict(ours, converted, strict=True, source=f"torchvision's {model}")
    return {"vislab": ours, "torchvision": theirs}


def torchvision_forward(model: MaskRCNN | FCOS, images: torch.Tensor, image_sizes: list[tuple[int, int]],
                        targets: list[dict] | None = None):
    """torchvision's detector without its GeneralizedRCNNTransform: the loss dict in training,
    per image a dict of ``boxes``, ``labels`` (1..90), ``scores`` (and ``masks``) in eval."""
    image_list = ImageList(images, image_sizes)
    if isinstance(model, FCOS):
        features = list(model.backbone(images).values())
        outputs = model.head(features)
        anchors = model.anchor_generator(image_list, features)
        counts = [f.shape[-2] * f.shape[-1] for f in features]
        if model.training:
            return model.compute_loss(targets, outputs, anchors, counts)
        split = {name: list(value.split(counts, dim=1)) for name, value in outputs.items()}
        return model.postprocess_detections(split, [list(a.split(counts)) for a in anchors], image_sizes)
    features = model.backbone(images)
    proposals, rpn_losses = model.rpn(image_list, features, targets)
    detections, roi_losses = model.roi_heads(features, proposals, image_sizes, targets)
    return {**rpn_losses, **roi_losses} if model.training else detections


def forward_of(library: str, model: nn.Module) -> Callable:
    """``forward(images, image_sizes, targets=None)`` of ``library``'s model."""
    return model if library == "vislab" else partial(torchvision_forward, model)


def library_targets(targets: list[dict], *, library: str) -> list[dict]:
    """torchvision counts classes from 1 (0 is background); vislab from 0."""
    if library == "vislab":
        return targets
    return [{**target, "labels": target["labels"] + 1} for target in targets]


def training_step(library: str, *, model: nn.Module, scene: Scene) -> Step:
    model.train()
    forward = forward_of(library, model)
    targets = library_targets(scene.targets, library=library)
    optimizer = torch.optim.SGD(model.parameters(), lr=LEARNING_RATE, momentum=MOMENTUM)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        losses = forward(scene.images, scene.image_sizes, targets)
        sum(losses.values()).backward()
        optimizer.step()

    return step


def inference_step(library: str, *, model: nn.Module, scene: Scene) -> Step:
    model.eval()
    forward = forward_of(library, model)

    def step() -> None:
        with torch.no_grad():
            forward(scene.images, scene.image_sizes)

    return step


STEP_BUILDERS = {"train": training_step, "inference": inference_step}


def build_contenders(model: str, mode: str, *, scene: Scene, device: torch.device) -> list[Contender]:
    """Both ``model``s on ``device`` in ``mode`` (weights prepared on the CPU ``scene``)."""
    models = {library: net.to(device) for library, net in build_models(model, images=scene.images).items()}
    scene = scene.to(device)
    return [Contender(library=library, model=model,
                      step=STEP_BUILDERS[mode](library, model=model, scene=scene))
            for library, model in models.items()]


def run_steps(step: Step, *, steps: int) -> None:
    for _ in range(steps):
        step()


def images_per_second(step: Step, *, steps: int, device: torch.device) -> float:
    return steps * NUM_IMAGES / train_bench.elapsed_seconds(partial(run_steps, step, steps=steps),
                                                            device=device)


def detections_per_image(contenders: list[Contender], *, scene: Scene,
                         device: torch.device) -> dict[str, list[int]]:
    """How many detections each model keeps per image: equal counts show both models run the
    mask head on the same boxes."""
    scene = scene.to(device)
    counts = {}
    for contender in contenders:
        with torch.no_grad():
            detections = forward_of(contender.library, contender.model)(scene.images, scene.image_sizes)
        counts[contender.library] = [len(detection["boxes"]) for detection in detections]
    return counts


def reset_peak_rss() -> None:
    """Set this process's peak RSS (``VmHWM``) to its current RSS (Linux's ``clear_refs``).
    The memory child builds both models and keeps one; the peak would still hold the other."""
    Path("/proc/self/clear_refs").write_text("5")


def report_rss_increase(*, model: str, library: str, mode: str, warmup: int) -> None:
    """Child mode: run ``library``'s ``model`` on CPU and print its peak-RSS increase as JSON."""
    scene = make_scene()
    net = build_models(model, images=scene.images)[library]
    step = STEP_BUILDERS[mode](library, model=net, scene=scene)
    gc.collect()
    reset_peak_rss()
    before = train_bench.peak_rss_kib()
    run_steps(step, steps=warmup + train_bench.MEMORY_STEPS)
    print(json.dumps({"library": library, "mode": mode,
                      "peak_rss_increase_kib": train_bench.peak_rss_kib() - before}))


def peak_memory_mib(contenders: list[Contender], *, model: str, mode: str, warmup: int,
                    device: torch.device) -> dict[str, float]:
    steps = warmup + train_bench.MEMORY_STEPS
    if device.type == "cuda":
        return {contender.library: train_bench.cuda_peak_increase_mib(
                    partial(run_steps, contender.step, steps=steps), device=device)
                for contender in contenders}
    return {contender.library: train_bench.child_peak_mib(
                [sys.executable, str(Path(__file__).resolve()), "--device", "cpu", "--warmup", str(warmup),
                 "--measure-memory-of", contender.library, "--memory-mode", mode, "--models", model])
            for contender in contenders}


def measure_mode(model: str, mode: str, *, args: argparse.Namespace, device: torch.device) -> dict:
    """Peak memory and interleaved throughput of both ``model``s in ``mode``, compared."""
    scene = make_scene()
    contenders = build_contenders(model, mode, scene=scene, device=device)
    memory = peak_memory_mib(contenders, model=model, mode=mode, warmup=args.warmup, device=device)
    for contender in contenders:
        run_steps(contender.step, steps=args.warmup)
    throughput = train_bench.interleaved_rounds(
        {contender.library: partial(images_per_second, contender.step, steps=args.steps, device=device)
         for contender in contenders}, rounds=args.rounds)
    comparison = train_bench.compare(throughput=throughput, memory=memory, candidate="vislab",
                                     baseline="torchvision")
    if mode == "inference":
        comparison["detections_per_image"] = detections_per_image(contenders, scene=scene, device=device)
    return comparison


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Compare a training iteration (forward + backward + SGD momentum step) and "
                    "inference of vislab's and torchvision's Mask R-CNN and FCOS R50-FPN on 2 images "
                    "of 384x512: throughput and peak memory.",
        epilog="example:\n  python benchmarks/detection.py --device cuda --json runs/detection.json",
        formatter_class=train_bench.HelpFormatter,
    )
    parser.add_argument("--steps", type=train_bench.positive_int, default=10,
                        help="timed iterations per round")
    parser.add_argument("--warmup", type=train_bench.non_negative_int, default=2,
                        help="untimed iterations per model before the first round")
    parser.add_argument("--rounds", type=train_bench.positive_int, default=3,
                        help="interleaved rounds; the median over rounds is reported")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="auto picks cuda if available, else cpu")
    parser.add_argument("--models", type=train_bench.names_from(MODELS), default=list(MODELS),
                        help=f"comma-separated, from {', '.join(MODELS)}")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the results here")
    parser.add_argument("--measure-memory-of", choices=LIBRARIES, help=argparse.SUPPRESS)
    parser.add_argument("--memory-mode", choices=MODES, default="train", help=argparse.SUPPRESS)
    return parser


def print_report(model: str, summary: dict) -> None:
    height, width = IMAGE_SIZE
    print(f"{model} R50-FPN on {summary['device']}: {NUM_IMAGES} images of {height}x{width}, "
          f"{BOXES_PER_IMAGE} boxes each, {summary['rounds']} rounds x {summary['steps']} iterations")
    print(f"{'mode':<10} {'library':<12} {'median img/s':>12} {'peak MiB':>10}  img/s per round")
    for mode in MODES:
        result = summary[model][mode]
        for library in LIBRARIES:
            per_round = ", ".join(f"{value:.2f}" for value in result["images_per_second"][library])
            print(f"{mode:<10} {library:<12} {result['median_images_per_second'][library]:>12.2f} "
                  f"{result['peak_memory_mib'][library]:>10.1f}  {per_round}")
    for mode in MODES:
        result = summary[model][mode]
        print(f"{mode}: throughput ratio (vislab/torchvision) {result['throughput_ratio']:.2f}x "
              f"(goal >= 1.00x: {train_bench.met(result['throughput_goal_met'])}), peak memory ratio "
              f"{result['memory_ratio']:.2f}x (goal <= 1.00x: {train_bench.met(result['memory_goal_met'])})")
    counts = summary[model]["inference"]["detections_per_image"]
    print("detections per image at inference: "
          + ", ".join(f"{library} {counts[library]}" for library in LIBRARIES))


def main() -> None:
    parser = build_parser()
    args = parser.parse_args()
    # After a few iterations some gradients of these randomly initialised detectors are denormal
    # floats, which x86 CPUs process many times slower (convolution backward went from 2 s to 80 s
    # an iteration, at random points in the run); flushed to zero, the CPU timing is of the
    # computation. No effect on CUDA.
    torch.set_flush_denormal(True)
    if args.measure_memory_of:
        report_rss_increase(model=args.models[0], library=args.measure_memory_of, mode=args.memory_mode,
                            warmup=args.warmup)
        return
    device = train_bench.resolve_device(args.device, parser=parser)
    summary = {"device": str(device), "num_images": NUM_IMAGES, "image_size": list(IMAGE_SIZE),
               "steps": args.steps, "warmup": args.warmup, "rounds": args.rounds,
               "versions": train_bench.versions(("torchvision", "vislab"))}
    for model in args.models:
        summary[model] = {mode: measure_mode(model, mode, args=args, device=device) for mode in MODES}
        print_report(model, summary)
    if args.json:
        train_bench.write_json(summary, path=args.json)


if __name__ == "__main__":
    main()
