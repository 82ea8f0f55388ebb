"""`vislab launch`: the sbatch script of a dry run, and the local executor's 2-task CPU job, which
trains as torchrun does and, preempted, requeues itself and resumes to the same weights."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml
from safetensors.torch import load_file

from helpers import TINY_DIGITS
from vislab.cli import main
from vislab.config import parse_overrides

pytest.importorskip("submitit")

REPO = Path(__file__).resolve().parents[1]
EPOCHS = 3  # the preemption test interrupts after the first epoch's checkpoint: two epochs of margin
TWO_TASKS = ["data.batch_size=8", f"train.epochs={EPOCHS}"]
FINAL_WEIGHTS = Path("checkpoints") / f"epoch_{EPOCHS:04d}" / "model.safetensors"


@pytest.fixture(scope="module")
def recipe(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("launch") / "tiny.yaml"
    path.write_text(yaml.safe_dump(parse_overrides(TINY_DIGITS)))
    return path


@pytest.fixture(scope="module")
def torchrun_run(recipe) -> Path:
    """The same run under ``torchrun --nproc_per_node=2``: the reference weights."""
    run_dir = recipe.parent / "torchrun"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         "-m", "vislab", "train", str(recipe), *TWO_TASKS, f"output_dir={run_dir}"],
        cwd=recipe.parent, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return run_dir


def _max_difference(run_a: Path, run_b: Path) -> float:
    a, b = load_file(str(run_a / FINAL_WEIGHTS)), load_file(str(run_b / FINAL_WEIGHTS))
    assert a.keys() == b.keys()
    return max((a[key] - b[key]).abs().max().item() for key in a)


def test_dry_run_prints_the_sbatch_script(tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model:\n  name: resnet18\n")
    assert main(["launch", "--nodes", "4", "--gpus-per-node", "8", "--partition", "gpu", "--timeout-min", "1440",
                 "--account", "vision", "--constraint", "h100", "--mem-gb", "480", "--cpus-per-task", "12",
                 "--dry-run", "--", "train", str(recipe), f"output_dir={tmp_path / 'run'}"]) == 0
    script = capsys.readouterr().out
    for line in ["#SBATCH --nodes=4", "#SBATCH --gpus-per-node=8", "#SBATCH --ntasks-per-node=8",
                 "#SBATCH --partition=gpu", "#SBATCH --time=1440", "#SBATCH --account=vision",
                 "#SBATCH --constraint=h100", "#SBATCH --mem=480GB", "#SBATCH --cpus-per-task=12",
                 "#SBATCH --signal=USR2@90", f"#SBATCH --output={tmp_path / 'run' / 'submitit'}/%j_0_log.out"]:
        assert line in script.splitlines(), line
    assert "srun" in script and f"output_dir={tmp_path / 'run'}" in script
    assert not (tmp_path / "run").exists()  # nothing submitted, nothing written


def test_slurm_without_sbatch_is_a_one_line_error(tmp_path, monkeypatch, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model:\n  name: resnet18\n")
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch here
    assert main(["launch", "--nodes", "2", "--gpus-per-node", "8", "--timeout-min", "60", "--",
                 "train", str(recipe), f"output_dir={tmp_path / 'run'}"]) == 1
    error = capsys.readouterr().err.strip()
    assert error.startswith("vislab launch: error: --executor slurm needs Slurm's sbatch on PATH") and "\n" not in error
    assert not (tmp_path / "run").exists()


def _launch_locally(recipe: Path, run_dir: Path) -> int:
    return main(["launch", "--executor", "local", "--tasks-per-node", "2", "--timeout-min", "30", "--",
                 "train", str(recipe), *TWO_TASKS, f"output_dir={run_dir}"])


@pytest.mark.slow
def test_local_launch_trains_as_torchrun_does(recipe, torchrun_run, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # as torchrun sets it
    run_dir = tmp_path / "launched"
    assert _launch_locally(recipe, run_dir) == 0
    assert "finished: 3 epochs" in capsys.readouterr().out
    assert _max_difference(run_dir, torchrun_run) < 1e-6
    logs = sorted(path.name for path in (run_dir / "submitit").glob("*_log.out"))
    assert len(logs) == 2 and logs[0].endswith("_0_log.out")  # one log per task, beside the run


def _children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (from /proc: no psutil here)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) if entry.name.isdigit() else None
        except (OSError, IndexError):
            continue
        if parent == pid:
            found.append(int(entry.name))
    return found


def _preempt_after_first_checkpoint(run_dir: Path) -> None:
    """Wait for the first epoch's checkpoint, then signal both tasks with USR2 as Slurm does before
    a time limit or a preemption."""
    first = run_dir / "checkpoints" / "epoch_0001"
    deadline = time.monotonic() + 120
    while not first.is_dir():
        assert time.monotonic() < deadline, "no checkpoint after 120 s"
        time.sleep(0.02)
    controllers = [pid for pid in _children(os.getpid())
                   if b"submitit.local._local" in Path(f"/proc/{pid}/cmdline").read_bytes()]
    tasks = [task for controller in controllers for task in _children(controller)]
    assert len(tasks) == 2, tasks
    for task in tasks:
        os.kill(task, signal.SIGUSR2)


@pytest.mark.slow
def test_preempted_job_requeues_and_resumes_to_the_same_weights(recipe, torchrun_run, tmp_path, monkeypatch):
    from submitit.core.utils import DelayedSubmission

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    run_dir = tmp_path / "preempted"
    outcome = {}
    launch = threading.Thread(target=lambda: outcome.update(rc=_launch_locally(recipe, run_dir)))
    launch.start()
    try:
        _preempt_after_first_checkpoint(run_dir)
    finally:
        launch.join(timeout=300)
    assert outcome.get("rc") == 0
    log = next((run_dir / "submitit").glob("*_0_log.out")).read_text()
    assert "Requeued job" in log
    requeued = DelayedSubmission.load(next((run_dir / "submitit").glob("*_submitted.pkl")))
    assert requeued.function.overrides[-1] == "resume=auto"
    assert _max_difference(run_dir, torchrun_run) < 1e-6
