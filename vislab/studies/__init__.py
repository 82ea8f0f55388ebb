"""Studies: sets of ordinary runs swept over axes and seeds, compared in one table, plot and fit."""
from pathlib import Path

from vislab.studies.report import write_report
from vislab.studies.runner import run_study
from vislab.studies.spec import Study, StudyError, load_study

STUDIES_ROOT = Path("runs") / "studies"


def study_folder(study: Study) -> Path:
    return STUDIES_ROOT / study.name


__all__ = ["Study", "StudyError", "load_study", "run_study", "study_folder", "write_report"]
