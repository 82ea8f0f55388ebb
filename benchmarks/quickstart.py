"""Time the main job: `vislab train configs/quickstart/digits.yaml`, end to end.

Runs the command as a user would (fresh process, imports included) and reports the wall time,
the trainer's own time and the validation accuracy. The target is <= 120 s on a 2-core CPU
with >= 97% top-1.

    python benchmarks/quickstart.py
"""
from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TARGET_SECONDS = 120.0
TARGET_TOP1 = 0.97


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / "digits"
        command = [sys.executable, "-m", "vislab", "train", str(REPO / "configs/quickstart/digits.yaml"),
                   f"output_dir={run_dir}"]
        start = time.perf_counter()
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
        wall = time.perf_counter() - start
        summary = json.loads((run_dir / "summary.json").read_text())
    top1 = summary["final"]["val/top1"]
    print(f"digits quickstart: wall {wall:.1f} s (training loop {summary['seconds']:.1f} s), "
          f"val top-1 {top1:.2%}")
    print(f"goal: <= {TARGET_SECONDS:.0f} s ({'met' if wall <= TARGET_SECONDS else 'missed'}), "
          f">= {TARGET_TOP1:.0%} top-1 ({'met' if top1 >= TARGET_TOP1 else 'missed'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
