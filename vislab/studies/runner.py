"""Run a study's members as ordinary ``vislab train`` runs, each in its own folder under the study's.

A member's stage is skipped when its run folder holds ``summary.json`` (it finished), resumed when
it holds checkpoints, and started afresh otherwise, so running a study again after a crash finishes
it without redoing work. Each run is a subprocess (``python -m vislab train``, torchrun with
several processes, or ``vislab launch ... --wait``: Slurm or submitit's local executor, see
``Launcher``) with its output in ``log.txt`` beside the run; a member that fails is reported with
the end of its log and the others go on. A shared stage that failed is not run again for the
other members that share it: they are reported as failed with its message.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from vislab.engine.checkpoint import CheckpointError, find_resumable
from vislab.engine.run import RUN_FILES
from vislab.studies.spec import Member, Study, resolve_stage_references
from vislab.utils.files import atomic_write_text

LOG_NAME = "log.txt"
RECORD_NAME = "study-stage.json"  # the recipe and overrides a stage's run was started with
LOG_TAIL_LINES = 15
# one lock per run folder: members running in parallel wait for a shared stage another one runs
_FOLDER_LOCKS: dict[Path, threading.Lock] = {}
_FOLDER_LOCKS_GUARD = threading.Lock()


def _folder_lock(run_dir: Path) -> threading.Lock:
    """The one lock of ``run_dir`` (created under a guard, so two threads never get two locks)."""
    with _FOLDER_LOCKS_GUARD:
        return _FOLDER_LOCKS.setdefault(run_dir.resolve(), threading.Lock())


@dataclass
class MemberResult:
    member: Member
    status: str  # done | skipped (finished earlier) | failed
    folder: Path
    message: str = ""


def member_folder(study_dir: Path, member: Member) -> Path:
    return study_dir / "members" / member.name


def stage_folders(study_dir: Path, member: Member) -> dict[str, Path]:
    """Each stage's run folder: the member's folder itself for a one-stage study; a shared stage's
    is named by a digest of its recipe and overrides, under ``shared/``."""
    folder = member_folder(study_dir, member)
    if len(member.stages) == 1:
        return {member.stages[0].name: folder}
    folders = {}
    for stage in member.stages:
        if stage.shared:
            digest = hashlib.sha1("\n".join([str(stage.recipe), *stage.overrides]).encode()).hexdigest()[:10]
            folders[stage.name] = study_dir / "shared" / f"{stage.name}-{digest}"
        else:
            folders[stage.name] = folder / stage.name
    return folders


def is_finished(run_dir: Path) -> bool:
    return (run_dir / "summary.json").is_file()


def has_checkpoint(run_dir: Path) -> bool:
    """Whether the run in ``run_dir`` saved a checkpoint it can resume from."""
    try:
        find_resumable(run_dir)
        return (run_dir / "checkpoints").is_dir()
    except CheckpointError:
        return False


@dataclass(frozen=True)
class Launcher:
    """How a stage's run is started: ``python -m vislab train``; through torchrun with
    ``nproc_per_node`` processes; or with ``launch`` (``vislab launch`` options, e.g. ``--executor
    slurm --nodes 2 --gpus-per-node 8 --timeout-min 240``), waiting for the job to end, requeues
    included."""

    nproc_per_node: int = 1
    launch: tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self):
        if self.nproc_per_node < 1:
            raise ValueError("--nproc-per-node must be at least 1")
        if self.launch and self.nproc_per_node > 1:
            raise ValueError("--launch sets the processes itself (--gpus-per-node, --tasks-per-node): "
                             "leave out --nproc-per-node")


def stage_command(stage_overrides: list[str], recipe: Path, run_dir: Path, *, launcher: Launcher) -> list[str]:
    """The ``vislab train`` command of one stage: resumed when its folder holds a checkpoint."""
    resume = ["resume=true"] if has_checkpoint(run_dir) else []
    train = ["train", str(recipe), *stage_overrides, f"output_dir={run_dir}", *resume]
    if launcher.launch:
        return [sys.executable, "-m", "vislab", "launch", *launcher.launch, "--wait", "--", *train]
    if launcher.nproc_per_node > 1:
        return [sys.executable, "-m", "torch.distributed.run", "--standalone",
                f"--nproc-per-node={launcher.nproc_per_node}", "-m", "vislab", *train]
    return [sys.executable, "-m", "vislab", *train]


def _clear_unresumable(run_dir: Path) -> None:
    """A run that stopped before its first checkpoint was saved left metrics but nothing to resume
    from: start it again (a fresh run refuses a folder holding a run's files)."""
    if run_dir.is_dir() and not has_checkpoint(run_dir):
        for name in RUN_FILES:
            target = run_dir / name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()


def _log_tail(log: Path) -> str:
    lines = log.read_text(errors="replace").splitlines() if log.is_file() else []
    return "\n".join(lines[-LOG_TAIL_LINES:])


def member_finished(study_dir: Path, member: Member) -> bool:
    folders = stage_folders(study_dir, member)
    return all(is_finished(folders[s.name]) for s in member.stages)


def _references(folders: dict[str, Path]) -> dict[str, str]:
    return {name: str(folder) for name, folder in folders.items()}


def _stale(run_dir: Path, record: dict) -> bool:
    """Whether ``run_dir`` holds a run made from other settings than ``record`` (the study file
    changed since): its results would be read as this member's."""
    path = run_dir / RECORD_NAME
    return path.is_file() and json.loads(path.read_text()) != record


def run_member(study_dir: Path, member: Member, *, launcher: Launcher = Launcher(), threads: int | None = None,
               failed_shared: dict[Path, str] | None = None) -> MemberResult:
    """Run the member's stages in order. ``failed_shared`` maps the folders of shared stages that
    failed in this study run to their messages: they are not run again."""
    failed_shared = {} if failed_shared is None else failed_shared
    folders = stage_folders(study_dir, member)
    env = dict(os.environ)
    if threads is not None and "OMP_NUM_THREADS" not in os.environ:
        env["OMP_NUM_THREADS"] = str(threads)
    ran = False
    for stage in member.stages:
        run_dir = folders[stage.name]
        overrides = [resolve_stage_references(o, _references(folders)) for o in stage.overrides]
        # the settings as the study file gives them (references unresolved, the recipe by its last
        # two path parts), so running the study from another folder finds its runs current
        record = {"recipe": f"{stage.recipe.parent.name}/{stage.recipe.name}", "overrides": list(stage.overrides)}
        with _folder_lock(run_dir):
            if _stale(run_dir, record):
                return MemberResult(member, "failed", run_dir,
                                    f"stage {stage.name}: {run_dir} holds a run with other settings than the "
                                    f"study now gives (see {run_dir / RECORD_NAME}); remove it to run it again")
            if is_finished(run_dir):
                continue
            if run_dir in failed_shared:
                return MemberResult(member, "failed", run_dir, f"stage {stage.name} is shared and failed for "
                                                               f"another member: {failed_shared[run_dir]}")
            ran = True
            _clear_unresumable(run_dir)
            run_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_text(run_dir / RECORD_NAME, json.dumps(record, indent=1))
            command = stage_command(overrides, stage.recipe, run_dir, launcher=launcher)
            log = run_dir / LOG_NAME
            with log.open("a") as out:
                out.write("$ " + " ".join(command) + "\n")
                out.flush()
                code = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, env=env).returncode
            if code != 0 or not is_finished(run_dir):
                message = f"stage {stage.name} exited with {code}; {log}:\n{_log_tail(log)}"
                if stage.shared:
                    failed_shared[run_dir] = message
                return MemberResult(member, "failed", run_dir, message)
    return MemberResult(member, "done" if ran else "skipped", member_folder(study_dir, member))


def describe(study: Study, study_dir: Path) -> list[str]:
    """One line per member (``--dry-run``): its state and each stage's command overrides."""
    lines = []
    for member in study.members:
        folders = stage_folders(study_dir, member)
        for stage in member.stages:
            run_dir = folders[stage.name]
            state = "finished" if is_finished(run_dir) else "resume" if has_checkpoint(run_dir) else "new"
            overrides = [resolve_stage_references(o, _references(folders)) for o in stage.overrides]
            label = member.name if len(member.stages) == 1 else f"{member.name}/{stage.name}"
            lines.append(f"{label} [{state}] {stage.recipe} {' '.join(overrides)}")
    return lines


def run_study(study: Study, study_dir: Path, *, jobs: int = 1, launcher: Launcher = Launcher(),
              report=print) -> list[MemberResult]:
    """Run every member (``jobs`` at a time), reporting each as it ends; failures do not stop the
    others. With several jobs each gets an equal share of the CPU threads."""
    threads = max(1, (os.cpu_count() or 1) // jobs) if jobs > 1 else None
    total = len(study.members)
    failed_shared: dict[Path, str] = {}  # written under each folder's lock

    def one(indexed: tuple[int, Member]) -> MemberResult:
        index, member = indexed
        result = run_member(study_dir, member, launcher=launcher, threads=threads, failed_shared=failed_shared)
        report(f"[{index + 1}/{total}] {member.name}: {result.status}"
               + (f"\n{result.message}" if result.message else ""))
        return result

    if jobs <= 1:
        return [one(item) for item in enumerate(study.members)]
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        return list(pool.map(one, enumerate(study.members)))
