"""``vislab export-weights``: one checkpoint's weights as a single file.

A run trained under FSDP keeps sharded checkpoints (each process's shards in its own file, see
``vislab.engine.sharded_checkpoint``); this gathers them into one state dict in one process, no
process group needed. It serves full checkpoints alike, to pick a run's best (or last) weights,
or their moving average, as a file to share.
"""
from __future__ import annotations

import argparse
from pathlib import Path

EXPORT_WEIGHTS_HELP = ("Gather a checkpoint's weights (sharded under FSDP, or full) into one .safetensors "
                       "file with vislab's metadata, or a .pth of plain tensors.")


def add_export_weights_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", help="run folder (its best checkpoint, else its last), checkpoint folder, "
                                       "or a checkpoint's sharded/ folder")
    parser.add_argument("out", help="the file to write: .safetensors, or .pth / .pt")
    parser.add_argument("--ema", action="store_true", help="the weights' moving average (train.ema_decay) instead")
    parser.add_argument("--force", action="store_true", help="overwrite an existing output file")


def export_weights_command(args: argparse.Namespace) -> int:
    from vislab.engine.checkpoint import EMA_FILE, resolve_weights
    from vislab.weights import WeightsError, is_sharded, read_sharded_weights, read_weights, save_weights

    out = Path(args.out)
    if out.exists() and not args.force:
        raise WeightsError(f"{out} exists; pass --force to overwrite it")
    weights = resolve_weights(args.source)
    if not args.ema:
        state, metadata = read_weights(weights)
    elif is_sharded(weights):
        state, metadata = read_sharded_weights(weights, prefix="ema")
    elif (weights.parent / EMA_FILE).is_file():
        state, metadata = read_weights(weights.parent / EMA_FILE)
    else:
        raise WeightsError(f"{weights.parent} holds no {EMA_FILE}: was the run trained with train.ema_decay?")
    save_weights(state, out, metadata=metadata)
    values = sum(tensor.numel() for tensor in state.values())
    print(f"{weights}{' (moving average)' if args.ema else ''} -> {out}: {len(state)} tensors, {values:,} values")
    return 0
