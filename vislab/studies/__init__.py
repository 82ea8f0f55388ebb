"""Studies: sets of ordinary runs swept over axes and seeds, compared in one table, plot and fit."""
from __future__ import annotations

from pathlib import Path

from vislab.studies.report import write_report
from vislab.studies.runner import Launcher, describe, run_study
from vislab.studies.spec import Study, StudyError, load_study

STUDIES_ROOT = Path("runs") / "studies"


def study_folder(study: Study) -> Path:
    return STUDIES_ROOT / study.name


def study_command(path: str | Path, *, out: str | Path | None = None, dry_run: bool = False, jobs: int = 1,
                  launcher: Launcher = Launcher(), report_only: bool = False) -> int:
    """``vislab study``: print the members (``dry_run``), or run them and write the report; the
    exit status is 1 when a member failed."""
    study = load_study(path)
    study_dir = Path(out) if out else study_folder(study)
    if dry_run:
        print(f"study {study.name}: {len(study.members)} members in {study_dir}")
        print("\n".join(describe(study, study_dir)))
        return 0
    if jobs < 1:
        raise ValueError("--jobs must be at least 1")
    results = None
    if not report_only:
        study_dir.mkdir(parents=True, exist_ok=True)
        results = run_study(study, study_dir, jobs=jobs, launcher=launcher,
                            report=lambda line: print(line, flush=True))
    print(write_report(study, study_dir, results))
    print(f"report: {study_dir / 'study.md'}")
    return 1 if any(r.status == "failed" for r in results or []) else 0


__all__ = ["Launcher", "Study", "StudyError", "load_study", "run_study", "study_command", "study_folder", "write_report"]
