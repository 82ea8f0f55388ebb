"""torchrun's elastic restarts (``--max-restarts K``): a restarted attempt continues the run folder
the attempt before it was writing.

torchrun tells its workers their job (``TORCHELASTIC_RUN_ID``), the restarts allowed and the
attempt's number. The first attempt to write a run folder marks it with the job's id; a restart
resumes the folder's newest checkpoint only when the mark is its own job's, so a first attempt
that refused an existing folder (an earlier run, no ``resume``) never makes a restart continue
that earlier run.
"""
from __future__ import annotations

import os
from pathlib import Path

from vislab.config import ConfigError
from vislab.utils.files import atomic_write_text

MARK_FILE = "torchelastic_run_id"


def restarts_allowed() -> int:
    return int(os.environ.get("TORCHELASTIC_MAX_RESTARTS", "0"))


def is_restart() -> bool:
    """Whether torchrun started this process again after a failed attempt."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) > 0


def check_output_dir(output_dir: str | None) -> None:
    """A run torchrun may restart needs a fixed folder: the default one is named by its start time,
    which would differ at each attempt."""
    if restarts_allowed() > 0 and not output_dir:
        raise ConfigError(f"torchrun --max-restarts {restarts_allowed()} restarts the run in its output_dir: "
                          f"set output_dir=... (the default folder is named by the time each attempt starts)")


def mark(run_dir: Path) -> None:
    """Mark ``run_dir`` as this torchrun job's, if torchrun may restart it."""
    if restarts_allowed() > 0:
        atomic_write_text(run_dir / MARK_FILE, os.environ.get("TORCHELASTIC_RUN_ID", ""))


def marked_by_this_job(run_dir: Path) -> bool:
    mark_file = run_dir / MARK_FILE
    return mark_file.is_file() and mark_file.read_text() == os.environ.get("TORCHELASTIC_RUN_ID")
