"""``docs/model-zoo.md``, generated from the registry: `vislab models --markdown`."""
from __future__ import annotations

from vislab.models.info import model_info
from vislab.models.registry import MODELS, list_models

HEADER = """# Model zoo

Generated from the registry by `vislab models --markdown > docs/model-zoo.md`; a test fails
when this page is stale. Params and GMACs are measured (GMACs = multiply-adds per image at the
input shown, attention included, counted by PyTorch's FlopCounterMode); the published figures
are those each model is held to: params exactly, GMACs within 2%. Detectors show no GMACs: an
R-CNN's multiply-adds depend on the proposals and detections of its input; their published box
and mask AP are COCO val2017 figures from the papers and model zoos named as sources (context, not
measured here). Action detectors are measured on one clip with one box covering its frame; their
published AVA mAP is AVA v2.2 frame mAP@0.5 over its 60 evaluated classes.
"""


# the published figures each task's table shows: (column, Reference field, format)
PUBLISHED_COLUMNS = {
    "detection": (("box AP", "box_ap", ".1f"), ("mask AP", "mask_ap", ".1f")),
    "action_detection": (("GMACs", "gmacs", ""), ("AVA mAP", "ava_map", ".1f")),
}
DEFAULT_COLUMNS = (("GMACs", "gmacs", ""), ("top-1", "top1", ".1f"))


def _fmt(value, spec: str) -> str:
    return "—" if value is None else format(value, spec)


def render_zoo_page() -> str:
    lines = [HEADER]
    for task in sorted({entry.task for entry in MODELS.values()}):
        columns = PUBLISHED_COLUMNS.get(task, DEFAULT_COLUMNS)
        published = " | ".join(f"published {title}" for title, _, _ in columns)
        lines += [f"## {task}", "",
                  f"| model | family | input | params | GMACs | published params | {published} | source |",
                  "|---|---|---|---:|---:|---:|---:|---:|---|"]
        for name in list_models(task=task):
            info, entry = model_info(name), MODELS[name]
            ref = entry.reference
            figures = [_fmt(ref and getattr(ref, field), spec) for _, field, spec in columns]
            lines.append(
                f"| `{name}` | {entry.family} | {'x'.join(map(str, info['input']))} | {info['params']:,} | "
                f"{_fmt(info['gmacs'], '.3f')} | {_fmt(ref and ref.params, ',')} | {' | '.join(figures)} | "
                f"{ref.source if ref else ''} |")
        lines.append("")
    return "\n".join(lines)
