"""The ``vislab`` command: train, eval, predict, models, flops, convert, export, export-weights, data, study,
ava-eval, launch."""
from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import textwrap
from pathlib import Path

from vislab.launch.command import LAUNCH_HELP, add_launch_arguments, launch_command
from vislab.weights_export import EXPORT_WEIGHTS_HELP, add_export_weights_arguments, export_weights_command

EXAMPLES = {
    "train": """\
        vislab train configs/quickstart/digits.yaml
        vislab train configs/quickstart/image_folder.yaml data.root=/data/pets train.epochs=30
        vislab train configs/quickstart/digits.yaml resume=true
        torchrun --nproc_per_node=2 -m vislab train configs/quickstart/digits.yaml""",
    "eval": "vislab eval configs/quickstart/digits.yaml weights=runs/digits/20261128-101500",
    "predict": """\
        vislab predict --weights runs/digits/20261128-101500 img1.png img2.jpg
        vislab predict --weights runs/shapes_mask_rcnn_r18_gn/20261128-101500 street.jpg --out street.png
        vislab predict --weights runs/moving_shapes_slowfast/20261128-101500 clip.mp4
        vislab predict --weights runs/moving_actors_slowfast/20261202-101500 clip.mp4 --boxes boxes.csv --out out.mp4""",
    "models": """\
        vislab models --json --task classification
        vislab models --markdown > docs/model-zoo.md""",
    "flops": "vislab flops resnet50 --input 3x224x224",
    "convert": "vislab convert --from torchvision --model resnet50 resnet50-0676ba61.pth resnet50.safetensors",
    "export": "vislab export runs/digits/20260101-120000 --format onnx --out digits.onnx --input 3x32x32",
    "export-weights": "vislab export-weights runs/mae_vit_l16/20261202-101500 mae_vit_l16.safetensors",
    "data": """\
        vislab data shapes --out data/shapes --train 600 --val 100 --seed 0
        vislab data moving-actors --out data/moving_actors""",
    "ava-eval": """\
        vislab ava-eval --groundtruth ava_val_v2.2.csv --detections detections.csv \\
            --labelmap ava_action_list_v2.2_for_activitynet_2019.pbtxt --exclusions ava_val_excluded_timestamps_v2.2.csv""",
    "study": """\
        vislab study configs/studies/gn_vs_bn_batch.yaml --dry-run
        vislab study configs/studies/data_scaling.yaml --jobs 2
        vislab study configs/studies/frozen_vs_finetuned.yaml --launch "--executor slurm --gpus-per-node 8 --timeout-min 240"
        vislab study configs/studies/invariance.yaml --report-only""",
    "launch": """\
        vislab launch --nodes 2 --gpus-per-node 8 --partition gpu --timeout-min 1440 -- train configs/pretrain/mae_vit_b16.yaml
        vislab launch --executor local --tasks-per-node 2 -- train configs/quickstart/digits.yaml""",
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vislab", description="Visual recognition research toolkit.")
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name: str, help_text: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help_text, description=help_text,
                              epilog="example:\n" + textwrap.indent(textwrap.dedent(EXAMPLES[name]), "  "),
                              formatter_class=argparse.RawDescriptionHelpFormatter)

    p = add("train", "Train a model from a recipe; key=value pairs override recipe keys.")
    p.add_argument("config", help="recipe YAML file")
    p.add_argument("overrides", nargs="*", metavar="key=value")

    p = add("eval", "Evaluate weights on a recipe's validation set (weights=PATH is required).")
    p.add_argument("config", help="recipe YAML file")
    p.add_argument("overrides", nargs="*", metavar="key=value")
    p.add_argument("--out", help="where to write the metrics JSON (default: beside the weights)")

    p = add("predict", "Print the top-5 classes of each image or video (multi-view), or draw a detector's "
                       "boxes and masks.")
    p.add_argument("--weights", required=True, help="weights file, checkpoint folder or run folder")
    p.add_argument("--model", help="registry name, for weights without vislab metadata")
    p.add_argument("--topk", type=int, default=5, help="classifiers: classes shown per image")
    p.add_argument("--out", help="detectors: the output PNG (one image) or folder (several)")
    p.add_argument("--score-threshold", type=float, default=0.5,
                   help="detectors: lowest score drawn; action detectors: lowest action probability shown")
    p.add_argument("--boxes", help="action detectors: person boxes per keyframe, in AVA's proposals CSV format")
    p.add_argument("--box-threshold", type=float, default=0.8, help="action detectors: lowest box score used")
    p.add_argument("images", nargs="+", metavar="FILE", help="images, or videos for a video model")

    p = add("models", "List registered models with params, GMACs and reference figures.")
    p.add_argument("--json", action="store_true", help="one JSON object per model")
    p.add_argument("--markdown", action="store_true", help="the docs/model-zoo.md page")
    p.add_argument("--task", help="only models of this task")
    p.add_argument("--energy", action="store_true",
                   help="add each model's estimated energy per input (mJ, 45 nm fp32 costs)")

    p = add("flops", "Count parameters and GMACs (multiply-adds) of a model.")
    p.add_argument("name")
    p.add_argument("--input", help="CxHxW (default: the model's reference input)")
    p.add_argument("--energy", action="store_true",
                   help="multiplications, additions and estimated energy per kind of layer")
    p.add_argument("--mul-pj", type=float, help="energy of one multiplication in pJ (default 3.7, fp32 at 45 nm)")
    p.add_argument("--add-pj", type=float, help="energy of one addition in pJ (default 0.9)")
    p.add_argument("--batch-size", type=int, default=32,
                   help="conv=ift / linear=ift: the training batch the transform's overhead is counted at")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="model options, e.g. norm=GN")

    p = add("convert", "Convert weights from another codebase into vislab safetensors.")
    p.add_argument("--from", dest="source", required=True, choices=["torchvision", "timm", "detectron2", "mae", "moco", "pytorchvideo"])
    p.add_argument("--model", required=True, help="vislab registry name")
    p.add_argument("src")
    p.add_argument("dst")
    p.add_argument("--force", action="store_true", help="overwrite an existing output file")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="model options of a non-default variant, e.g. global_pool=avg")

    p = add("export", "Export trained weights as ONNX (classifiers, video models) or a torch.export program "
                      "(detectors too), checked against PyTorch's outputs.")
    p.add_argument("weights", help="weights file, checkpoint folder or run folder")
    p.add_argument("--format", required=True, choices=["onnx", "torch-export"])
    p.add_argument("--out", required=True, help="the file to write (.onnx, or .pt2 for torch-export)")
    p.add_argument("--input", help="one sample's shape, CxHxW or CxTxHxW for video (default: the training size)")
    p.add_argument("--model", help="registry name, for weights without vislab metadata")

    p = add("data", "Generate an embedded synthetic dataset.")
    data = p.add_subparsers(dest="dataset", required=True)
    shapes = data.add_parser("shapes", help="COCO-format detection set of shapes on textured backgrounds")
    shapes.add_argument("--out", required=True, help="folder to generate into (kept if already generated)")
    shapes.add_argument("--train", type=int, default=600, help="training images")
    shapes.add_argument("--val", type=int, default=100, help="validation images")
    shapes.add_argument("--seed", type=int, default=0)
    moving = data.add_parser("moving-shapes", help="mp4 clips of one shape whose motion alone is its class")
    moving.add_argument("--out", required=True, help="folder to generate into (kept if already generated)")
    moving.add_argument("--train", type=int, default=800, help="training videos")
    moving.add_argument("--val", type=int, default=160, help="validation videos")
    moving.add_argument("--seed", type=int, default=0)
    moving = data.add_parser("moving-actors", help="AVA-format action detection set: several shapes per clip, "
                                                   "each with a box track and actions defined by its motion")
    moving.add_argument("--out", required=True, help="folder to generate into (kept if already generated)")
    moving.add_argument("--train", type=int, default=720, help="training videos")
    moving.add_argument("--val", type=int, default=144, help="validation videos")
    moving.add_argument("--seed", type=int, default=0)

    p = add("ava-eval", "Frame-level mAP at IoU 0.5 of action detections, as the ActivityNet AVA evaluator "
                        "computes it, from files alone.")
    p.add_argument("--groundtruth", required=True, help="AVA annotation CSV")
    p.add_argument("--detections", required=True, help="video_id,second,x1,y1,x2,y2,action_id,score rows")
    p.add_argument("--labelmap", required=True, help="the evaluated actions (.pbtxt)")
    p.add_argument("--exclusions", help="keyframes left out (video_id,second rows)")
    p.add_argument("--json", action="store_true", help='print {"mAP": ..., "per_class": {name: AP}}')

    p = add("study", "Run a study: every member of a grid of overrides and seeds as its own run (finished "
                     "members skipped, interrupted ones resumed), then its table, plot and fits.")
    p.add_argument("study", help="study YAML file")
    p.add_argument("--out", help="the study's folder (default: runs/studies/<name>)")
    p.add_argument("--dry-run", action="store_true", help="print one line per member and run nothing")
    p.add_argument("--jobs", type=int, default=1, help="members run at the same time (each gets a share of the CPU threads)")
    p.add_argument("--nproc-per-node", type=int, default=1, help="run each member through torchrun with this many processes")
    p.add_argument("--launch", metavar="OPTIONS", help='run each member through `vislab launch OPTIONS` and wait for it, '
                                                      'e.g. "--executor slurm --gpus-per-node 8 --timeout-min 240"')
    p.add_argument("--report-only", action="store_true", help="only write the report from the members that finished")
    add_launch_arguments(add("launch", LAUNCH_HELP))
    add_export_weights_arguments(add("export-weights", EXPORT_WEIGHTS_HELP))
    return parser


def _cmd_study(args) -> int:
    from vislab.studies import Launcher, study_command

    launcher = Launcher(nproc_per_node=args.nproc_per_node, launch=tuple(shlex.split(args.launch or "")))
    return study_command(args.study, out=args.out, dry_run=args.dry_run, jobs=args.jobs, launcher=launcher,
                         report_only=args.report_only)


def _cmd_train(args) -> int:
    """``_train``; under torchrun with its error recording (tracebacks in torchrun's failure summary)."""
    if "TORCHELASTIC_RUN_ID" not in os.environ:
        return _train(args)
    from torch.distributed.elastic.multiprocessing.errors import record

    return record(_train)(args)


def _train(args) -> int:
    from vislab.config import load_config
    from vislab.engine.run import train

    cfg = load_config(args.config, args.overrides)
    summary = train(cfg)
    if summary.get("final") is not None:
        _print_summary(cfg, summary)
    return 0


def _metric(name: str, value: float) -> str:
    """Accuracies and APs (fractions) as percentages; losses as they are."""
    return f"{value:.4f}" if name.endswith("loss") else f"{value:.2%}"


def _print_summary(cfg, summary: dict) -> None:
    if int(os.environ.get("RANK", "0")) != 0:
        return
    final, best = summary["final"], summary["best"]
    metrics = ", ".join(f"{k.removeprefix('val/')} {_metric(k, v)}" for k, v in final.items() if k.startswith("val/"))
    print(f"{cfg.recipe or cfg.model.name}: val {metrics}; best {best['metric'].removeprefix('val/')} "
          f"{_metric(best['metric'], best['value'])} at epoch {best['epoch']}; {summary['epochs']} epochs, {summary['steps']} "
          f"steps in {summary['seconds']:.1f} s; run {summary['run_dir']}")


def _cmd_eval(args) -> int:
    from vislab.eval_command import eval_command

    return eval_command(args)


def _cmd_predict(args) -> int:
    from vislab.predict_command import predict_command

    return predict_command(args)


def _cmd_models(args) -> int:
    from vislab.models import list_models, model_info

    if args.markdown:
        from vislab.models.zoo_page import render_zoo_page

        print(render_zoo_page(), end="")
        return 0
    names = list_models(task=args.task)
    energy_column = f" {'mJ':>8}" if args.energy else ""
    if not args.json:
        print(f"{'name':36} {'task':15} {'params':>12} {'GMACs':>8} {'ref GMACs':>9}{energy_column}  input")
    for name in names:
        info = model_info(name)
        if args.json:
            print(json.dumps(info))
        else:
            ref = info["reference"] or {}
            gmacs = "—" if info["gmacs"] is None else f"{info['gmacs']:.3f}"
            energy = ("—" if info["energy_mj"] is None else f"{info['energy_mj']:.2f}") if args.energy else None
            print(f"{name:36} {info['task']:15} {info['params']:>12,} {gmacs:>8} {ref.get('gmacs') or '':>9}"
                  + (f" {energy:>8}" if args.energy else "") + f"  {'x'.join(map(str, info['input']))}")
    return 0


def _input_shape(args) -> tuple[int, ...] | None:
    """``--input CxHxW`` (or CxTxHxW) as a tuple, None when not given."""
    if not args.input:
        return None
    try:
        return tuple(int(v) for v in args.input.lower().split("x"))
    except ValueError:
        raise SystemExit(f"vislab {args.command}: --input {args.input!r} is not of the form CxHxW") from None


def _cmd_export(args) -> int:
    from vislab.export import export_weights

    report = export_weights(args.weights, fmt=args.format, out=args.out, input_shape=_input_shape(args),
                            model_name=args.model)
    print(f"{args.weights} -> {report.out} ({args.format}, input 1x{'x'.join(map(str, report.input_shape))}); "
          f"outputs equal PyTorch's within {report.max_abs_diff:.2g}")
    return 0


def _cmd_flops(args) -> int:
    from vislab.config import parse_overrides
    from vislab.models import model_info
    from vislab.models.info import invariance_overhead
    from vislab.models.registry import get_entry

    size = _input_shape(args)
    info = model_info(args.name, input_size=size, **parse_overrides(args.overrides))
    ref = info["reference"] or {}
    gmacs = "no GMACs (they depend on the detections)" if info["gmacs"] is None else f"{info['gmacs']:.3f} GMACs"
    print(f"{info['name']}: {info['params']:,} params, {gmacs} at "
          f"{'x'.join(map(str, info['input']))}"
          + (f" (published: {ref['params']:,} params"
             + (f", {ref['gmacs']} GMACs" if ref.get("gmacs") else "")
             + f" at {'x'.join(map(str, get_entry(args.name).input_size))}, {get_entry(args.name).num_classes} classes)"
             if ref.get("params") else ""))
    overhead = invariance_overhead(args.name, input_size=size, batch_size=args.batch_size,
                                   **parse_overrides(args.overrides))
    if overhead is not None:
        print(f"invariance transform: {overhead['gmacs']:.3f} GMACs per input in a training forward at batch "
              f"{overhead['batch_size']} against {overhead['plain_gmacs']:.3f} with plain layers "
              f"(+{overhead['overhead']:.1%})")
    if args.energy:
        from vislab.models.complexity import ADDITION_PJ, MULTIPLICATION_PJ, energy_mj

        args.mul_pj = MULTIPLICATION_PJ if args.mul_pj is None else args.mul_pj
        args.add_pj = ADDITION_PJ if args.add_pj is None else args.add_pj
        operations = info["operations"]
        if operations is None:
            raise SystemExit(f"vislab flops: {args.name}'s operations depend on its detections; no energy count")
        print(f"{'layers':18} {'GMACs':>9} {'G mult':>9} {'G add':>9} {'mJ':>9}")
        for kind, count in sorted(operations.items()):
            print(f"{kind:18} {count['macs']:>9.2f} {count['multiplications']:>9.2f} {count['additions']:>9.2f} "
                  f"{energy_mj({kind: count}, multiplication_pj=args.mul_pj, addition_pj=args.add_pj):>9.2f}")
        total = energy_mj(operations, multiplication_pj=args.mul_pj, addition_pj=args.add_pj)
        print(f"{'total':18} {info['gmacs']:>9.2f} {sum(c['multiplications'] for c in operations.values()):>9.2f} "
              f"{sum(c['additions'] for c in operations.values()):>9.2f} {total:>9.2f}  "
              f"({args.mul_pj} pJ per multiplication, {args.add_pj} pJ per addition)")
    return 0


def _cmd_convert(args) -> int:
    from vislab.convert import convert_file

    from vislab.config import parse_overrides

    report = convert_file(source=args.source, model_name=args.model, src=args.src, dst=args.dst,
                          options=parse_overrides(args.overrides), force=args.force)
    print(f"wrote {args.dst}: {report}")
    return 0


def _data_shapes(args) -> dict:
    from vislab.data.datasets.shapes import ensure_shapes

    return ensure_shapes(Path(args.out), train=args.train, val=args.val, seed=args.seed)


def _data_moving_shapes(args) -> dict:
    from vislab.data.datasets.moving_shapes import ensure_moving_shapes

    return ensure_moving_shapes(Path(args.out), train=args.train, val=args.val, seed=args.seed)


def _data_moving_actors(args) -> dict:
    from vislab.data.datasets.moving_actors import ensure_moving_actors

    return ensure_moving_actors(Path(args.out), train=args.train, val=args.val, seed=args.seed)


DATASETS = {"shapes": _data_shapes, "moving-shapes": _data_moving_shapes, "moving-actors": _data_moving_actors}


def _cmd_data(args) -> int:
    for name, path in DATASETS[args.dataset](args).items():
        print(f"{name:18} {path}")
    return 0


def _cmd_ava_eval(args) -> int:
    from vislab.evaluation.ava_command import ava_eval

    return ava_eval(groundtruth=args.groundtruth, detections=args.detections, labelmap=args.labelmap,
                    exclusions=args.exclusions, as_json=args.json)


def _one_line(exc: BaseException) -> str:
    """The error's message; for one re-raised from a DataLoader worker (whose message carries
    the worker's traceback) the original error's last line."""
    text = str(exc)
    if "Original Traceback" in text:
        return text.strip().splitlines()[-1]
    return text


COMMANDS = {"train": _cmd_train, "eval": _cmd_eval, "predict": _cmd_predict, "models": _cmd_models,
            "flops": _cmd_flops, "convert": _cmd_convert, "export": _cmd_export, "data": _cmd_data,
            "study": _cmd_study, "ava-eval": _cmd_ava_eval, "launch": launch_command,
            "export-weights": export_weights_command}


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    # key=value pairs may follow options (``vislab flops resnet50 --input 3x64x64 norm=GN``)
    if extra and hasattr(args, "overrides") and all("=" in e and not e.startswith("-") for e in extra):
        args.overrides += extra
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    from vislab.errors import GENERIC_ERRORS, USER_ERRORS

    try:
        return COMMANDS[args.command](args)
    except USER_ERRORS as exc:
        if os.environ.get("VISLAB_DEBUG"):
            raise
        print(f"vislab {args.command}: error: {_one_line(exc)}", file=sys.stderr)
        if type(exc) in GENERIC_ERRORS:
            print("(set VISLAB_DEBUG=1 to see the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
