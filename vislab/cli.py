"""The ``vislab`` command: train, eval, predict, models, flops, convert."""
from __future__ import annotations

import argparse
import json
import os
import sys
import textwrap
from pathlib import Path

EXAMPLES = {
    "train": """\
        vislab train configs/quickstart/digits.yaml
        vislab train configs/quickstart/image_folder.yaml data.root=/data/pets train.epochs=30
        vislab train configs/quickstart/digits.yaml resume=true
        torchrun --nproc_per_node=2 -m vislab train configs/quickstart/digits.yaml""",
    "eval": "vislab eval configs/quickstart/digits.yaml weights=runs/digits/20261128-101500",
    "predict": "vislab predict --weights runs/digits/20261128-101500 img1.png img2.jpg",
    "models": """\
        vislab models --json --task classification
        vislab models --markdown > docs/model-zoo.md""",
    "flops": "vislab flops resnet50 --input 3x224x224",
    "convert": "vislab convert --from torchvision --model resnet50 resnet50-0676ba61.pth resnet50.safetensors",
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

    p = add("predict", "Print the top-5 classes of each image.")
    p.add_argument("--weights", required=True, help="weights file, checkpoint folder or run folder")
    p.add_argument("--model", help="registry name, for weights without vislab metadata")
    p.add_argument("--topk", type=int, default=5)
    p.add_argument("images", nargs="+")

    p = add("models", "List registered models with params, GMACs and reference figures.")
    p.add_argument("--json", action="store_true", help="one JSON object per model")
    p.add_argument("--markdown", action="store_true", help="the docs/model-zoo.md page")
    p.add_argument("--task", help="only models of this task")

    p = add("flops", "Count parameters and GMACs (multiply-adds) of a model.")
    p.add_argument("name")
    p.add_argument("--input", help="CxHxW (default: the model's reference input)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="model options, e.g. norm=GN")

    p = add("convert", "Convert weights from another codebase into vislab safetensors.")
    p.add_argument("--from", dest="source", required=True, choices=["torchvision", "timm"])
    p.add_argument("--model", required=True, help="vislab registry name")
    p.add_argument("src")
    p.add_argument("dst")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="model options of a non-default variant, e.g. global_pool=avg")
    return parser


def _cmd_train(args) -> int:
    from vislab.config import load_config
    from vislab.engine.run import train

    cfg = load_config(args.config, args.overrides)
    summary = train(cfg)
    if summary.get("final") is not None:
        _print_summary(cfg, summary)
    return 0


def _print_summary(cfg, summary: dict) -> None:
    if int(os.environ.get("RANK", "0")) != 0:
        return
    final, best = summary["final"], summary["best"]
    metrics = ", ".join(f"{k.removeprefix('val/')} {v:.2%}" for k, v in final.items() if k.startswith("val/"))
    print(f"{cfg.recipe or cfg.model.name}: val {metrics}; best {best['metric'].removeprefix('val/')} "
          f"{best['value']:.2%} at epoch {best['epoch']}; {summary['epochs']} epochs, {summary['steps']} "
          f"steps in {summary['seconds']:.1f} s; run {summary['run_dir']}")


def _cmd_eval(args) -> int:
    from vislab.config import ConfigError, load_config
    from vislab.engine.checkpoint import resolve_weights
    from vislab.engine.distributed import DistInfo, resolve_device
    from vislab.tasks import build_task

    cfg = load_config(args.config, args.overrides)
    if not cfg.weights:
        raise ConfigError("vislab eval needs weights=PATH (a weights file, checkpoint folder or run folder)")
    weights = resolve_weights(cfg.weights)
    cfg.weights = str(weights)
    device = resolve_device(cfg.train.device)
    task = build_task(cfg)
    model = task.build_model().to(device)
    single = DistInfo()
    metrics = task.evaluate(model, task.build_val_loader(single), device=device, dist=single)
    record = {"weights": str(weights), **{f"val/{k}": v for k, v in metrics.items()}}
    out = Path(args.out) if args.out else weights.parent / "eval.json"
    out.write_text(json.dumps(record, indent=2))
    print("  ".join(f"{k} {v:.4f}" for k, v in record.items() if isinstance(v, float)) + f"  -> {out}")
    return 0


def _cmd_predict(args) -> int:
    from vislab.predict import load_predictor

    predictor = load_predictor(args.weights, model_name=args.model)
    for path, top in zip(args.images, predictor.predict(args.images, topk=args.topk)):
        print(path)
        for label, prob in top:
            print(f"  {prob:7.2%}  {label}")
    return 0


def _cmd_models(args) -> int:
    from vislab.models import list_models, model_info

    if args.markdown:
        from vislab.models.zoo_page import render_zoo_page

        print(render_zoo_page(), end="")
        return 0
    names = list_models(task=args.task)
    if not args.json:
        print(f"{'name':24} {'task':15} {'params':>12} {'GMACs':>8} {'ref GMACs':>9}  input")
    for name in names:
        info = model_info(name)
        if args.json:
            print(json.dumps(info))
        else:
            ref = info["reference"] or {}
            print(f"{name:24} {info['task']:15} {info['params']:>12,} {info['gmacs']:>8.3f} "
                  f"{ref.get('gmacs') or '':>9}  {'x'.join(map(str, info['input']))}")
    return 0


def _cmd_flops(args) -> int:
    from vislab.config import parse_overrides
    from vislab.models import model_info
    from vislab.models.registry import get_entry

    size = None
    if args.input:
        try:
            size = tuple(int(v) for v in args.input.lower().split("x"))
        except ValueError:
            raise SystemExit(f"vislab flops: --input {args.input!r} is not of the form CxHxW") from None
    info = model_info(args.name, input_size=size, **parse_overrides(args.overrides))
    ref = info["reference"] or {}
    print(f"{info['name']}: {info['params']:,} params, {info['gmacs']:.3f} GMACs at "
          f"{'x'.join(map(str, info['input']))}"
          + (f" (published: {ref['params']:,} params"
             + (f", {ref['gmacs']} GMACs" if ref.get("gmacs") else "")
             + f" at {'x'.join(map(str, get_entry(args.name).input_size))}, {get_entry(args.name).num_classes} classes)"
             if ref.get("params") else ""))
    return 0


def _cmd_convert(args) -> int:
    from vislab.convert import convert_file

    from vislab.config import parse_overrides

    report = convert_file(source=args.source, model_name=args.model, src=args.src, dst=args.dst,
                          options=parse_overrides(args.overrides))
    print(f"wrote {args.dst}: {report}")
    return 0


def _one_line(exc: BaseException) -> str:
    """The error's message; for one re-raised from a DataLoader worker (whose message carries
    the worker's traceback) the original error's last line."""
    text = str(exc)
    if "Original Traceback" in text:
        return text.strip().splitlines()[-1]
    return text


COMMANDS = {"train": _cmd_train, "eval": _cmd_eval, "predict": _cmd_predict, "models": _cmd_models,
            "flops": _cmd_flops, "convert": _cmd_convert}


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
