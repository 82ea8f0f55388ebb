"""``vislab export``: trained weights as a deployable program.

- ``onnx`` (classifiers and video models): ``torch.onnx.export`` with the dynamo exporter
  (onnxscript), the batch dimension left dynamic, then run with onnxruntime on the example input
  and compared with PyTorch's output.
- ``torch-export`` (classifiers, video models and detectors: FCOS, Faster / Mask / Cascade R-CNN):
  a ``torch.export`` program saved with ``torch.export.save`` (``.pt2``), run again after loading
  and compared the same way. Its input size is fixed (``--input``): a detector's proposal and
  detection counts may vary, but its image size and ``image_sizes`` may not. Detectors call
  vislab's exportable NMS operator, so ``import vislab`` before ``torch.export.load``.

The exported model is the one ``vislab predict`` runs: normalised images in, logits (or the
detector's per-image dict of boxes, scores, labels and 28x28 mask probabilities) out. Action
detectors (clips and boxes in) are not exported. onnx, onnxscript and onnxruntime are the
optional ``export`` extra (``pip install 'vislab[export]'``).
"""
from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
from omegaconf import DictConfig
from torch import nn

from vislab.predict import load_trained_model
from vislab.utils.files import atomic_path

FORMATS = ("onnx", "torch-export")
TOLERANCE = 1e-4


class ExportError(RuntimeError):
    """A model that cannot be exported as asked, or whose export does not reproduce it."""


@dataclass
class ExportReport:
    out: Path
    input_shape: tuple[int, ...]
    max_abs_diff: float


def default_input_shape(cfg: DictConfig) -> tuple[int, ...]:
    """One sample's shape at the size the model was trained to see: C x H x W for images
    (detectors: the evaluation shorter side, square), C x T x H x W for video clips."""
    d = cfg.data
    if cfg.task == "video":
        return (3, d.num_frames, d.image_size, d.image_size)
    if cfg.task == "detection":
        return (3, d.test_min_size, d.test_min_size)
    return (3, d.image_size, d.image_size)


def _example_args(cfg: DictConfig, shape: Sequence[int]) -> tuple[Any, ...]:
    expected = 4 if cfg.task == "video" else 3
    if len(shape) != expected:
        layout = "3xTxHxW" if cfg.task == "video" else "3xHxW"
        raise ExportError(f"--input {'x'.join(map(str, shape))} does not fit a {cfg.task} model: give {layout}")
    x = torch.randn(1, *shape, generator=torch.Generator().manual_seed(0))
    return (x, [tuple(shape[-2:])]) if cfg.task == "detection" else (x,)


def _flat(output: Any) -> list[torch.Tensor]:
    if isinstance(output, torch.Tensor):
        return [output]
    if isinstance(output, dict):
        return [t for key in sorted(output) for t in _flat(output[key])]
    if isinstance(output, (list, tuple)):
        return [t for item in output for t in _flat(item)]
    return []


def _max_abs_diff(expected: Any, actual: Any) -> float:
    expected, actual = _flat(expected), _flat(actual)
    if len(expected) != len(actual) or any(e.shape != a.shape for e, a in zip(expected, actual)):
        raise ExportError(f"the exported model's outputs have other shapes than the model's: "
                          f"{[tuple(e.shape) for e in expected]} vs {[tuple(a.shape) for a in actual]}")
    return max(((e.double() - a.double()).abs().max().item() for e, a in zip(expected, actual) if e.numel()),
               default=0.0)


def _export_onnx(model: nn.Module, args: tuple, out: Path) -> Any:
    try:
        import onnxruntime
    except ImportError:
        raise ExportError("ONNX export needs the optional export extra: pip install 'vislab[export]' "
                          "(onnx, onnxscript, onnxruntime)") from None
    batch = torch.export.Dim("batch", min=1, max=1024)
    with atomic_path(out) as tmp:
        program = torch.onnx.export(model, args, dynamo=True, input_names=["images"], output_names=["logits"],
                                    dynamic_shapes=({0: batch},), verbose=False)
        program.save(str(tmp))
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    return [torch.from_numpy(array) for array in session.run(None, {"images": args[0].numpy()})]


def _export_program(model: nn.Module, args: tuple, out: Path) -> Any:
    program = torch.export.export(model, args, strict=False)
    buffer = io.BytesIO()  # torch.export.save wants a .pt2 name or a buffer, not a temporary name
    torch.export.save(program, buffer)
    with atomic_path(out) as tmp:
        tmp.write_bytes(buffer.getvalue())
    return torch.export.load(out).module()(*args)


def export_weights(weights: str | Path, *, fmt: str, out: str | Path, input_shape: Sequence[int] | None = None,
                   model_name: str | None = None, tolerance: float = TOLERANCE) -> ExportReport:
    """Export the model ``weights`` hold as ``fmt`` to ``out``, check that the export gives the
    model's outputs on a random example within ``tolerance``, and report the difference."""
    if fmt not in FORMATS:
        raise ExportError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    model, cfg, _ = load_trained_model(weights, model_name=model_name)
    if cfg.task == "action_detection":
        raise ExportError(f"{cfg.model.name} is an action detector, which takes clips and boxes: vislab export "
                          f"covers classifiers, video classifiers and detectors")
    if fmt == "onnx" and cfg.task == "detection":
        raise ExportError(f"{cfg.model.name} is a detector: export it with --format torch-export "
                          f"(ONNX export covers classifiers and video models)")
    shape = tuple(input_shape) if input_shape else default_input_shape(cfg)
    args = _example_args(cfg, shape)
    out = Path(out)
    with torch.no_grad():
        expected = model(*args)
        actual = _export_onnx(model, args, out) if fmt == "onnx" else _export_program(model, args, out)
    diff = _max_abs_diff(expected, actual)
    if not diff <= tolerance:
        out.unlink(missing_ok=True)
        raise ExportError(f"the {fmt} export of {cfg.model.name} differs from the model by {diff:.3g} "
                          f"(more than {tolerance:g}); nothing was written")
    return ExportReport(out=out, input_shape=shape, max_abs_diff=diff)
