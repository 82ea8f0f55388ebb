"""``vislab eval``: a model's metrics on a recipe's validation set, printed and kept in ``eval.json``."""
from __future__ import annotations

import json
import sys
from pathlib import Path

from vislab.config import ConfigError, load_config
from vislab.engine.checkpoint import resolve_weights
from vislab.engine.distributed import DistInfo, resolve_device
from vislab.engine.precise_bn import recompute_batchnorm_statistics
from vislab.tasks import build_task
from vislab.utils.files import atomic_write_text
from vislab.utils.finite import finite_outputs


def eval_command(args) -> int:
    cfg = load_config(args.config, args.overrides)
    if not cfg.weights:
        raise ConfigError("vislab eval needs weights=PATH (a weights file, checkpoint folder or run folder)")
    weights = resolve_weights(cfg.weights)
    cfg.weights = str(weights)
    device = resolve_device(cfg.train.device)
    task = build_task(cfg)
    model = task.build_model().to(device)
    single = DistInfo()
    out = Path(args.out) if args.out else weights.parent / "eval.json"
    if cfg.train.precise_bn_batches:  # as training does before its evaluations
        recompute_batchnorm_statistics(model, task.build_train_loader(single)[0], dist=single,
                                       num_batches=cfg.train.precise_bn_batches,
                                       train_step=task.train_step, device=device)
    with finite_outputs(model, what=f"the output of {weights}"):
        metrics = task.evaluate(model, task.build_val_loader(single), device=device, dist=single,
                                out_dir=out.parent / out.stem)
    record = {"weights": str(weights), **{f"val/{k}": v for k, v in metrics.items()}}
    print("  ".join(f"{k} {v:.4f}" for k, v in record.items() if isinstance(v, float)))
    try:
        atomic_write_text(out, json.dumps(record, indent=2))
    except OSError as exc:
        print(f"vislab eval: error: the metrics above could not be saved to {out}: {exc.strerror or exc}",
              file=sys.stderr)
        return 1
    print(f"-> {out}")
    return 0
