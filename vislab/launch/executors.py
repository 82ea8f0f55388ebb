"""submitit executors for ``vislab launch``: Slurm's (or the sbatch script it would submit) and the
local one, which runs the same job on this machine."""
from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import submitit
from submitit.slurm.slurm import SlurmExecutor

from vislab.launch import LaunchError

# submitit's default: how many times a job may requeue itself on reaching its time limit
DEFAULT_MAX_TIMEOUTS = 3


@dataclass(frozen=True)
class JobResources:
    """What the job asks for. One process per GPU; on CPU-only jobs ``tasks_per_node`` processes."""

    nodes: int
    gpus_per_node: int
    tasks_per_node: int
    timeout_min: int
    job_name: str
    partition: str | None = None
    account: str | None = None
    constraint: str | None = None
    mem_gb: int | None = None
    cpus_per_task: int | None = None


class _RenderOnlySlurmExecutor(SlurmExecutor):
    """A SlurmExecutor that exists on a machine without ``srun``, to render the sbatch script for
    ``--dry-run``; it is never asked to submit."""

    @classmethod
    def affinity(cls) -> int:
        return 2


def _sbatch_parameters(resources: JobResources) -> dict:
    """SlurmExecutor's parameters (sbatch's option names), the optional ones only when given."""
    parameters = {"nodes": resources.nodes, "ntasks_per_node": resources.tasks_per_node,
                  "time": resources.timeout_min, "job_name": resources.job_name}
    optional = {"gpus_per_node": resources.gpus_per_node or None, "partition": resources.partition,
                "account": resources.account, "constraint": resources.constraint,
                "mem": None if resources.mem_gb is None else f"{resources.mem_gb}GB",
                "cpus_per_task": resources.cpus_per_task}
    parameters.update({key: value for key, value in optional.items() if value is not None})
    return parameters


def slurm_executor(folder: Path, resources: JobResources, *, max_timeouts: int,
                   render_only: bool = False) -> SlurmExecutor:
    if not render_only and shutil.which("sbatch") is None:
        raise LaunchError("--executor slurm needs Slurm's sbatch on PATH and it is not there; run on the "
                          "cluster's login node, use --executor local, or add --dry-run to print the script")
    executor_class = _RenderOnlySlurmExecutor if render_only else SlurmExecutor
    executor = executor_class(folder=folder, max_num_timeout=max_timeouts)
    executor.update_parameters(**_sbatch_parameters(resources))
    return executor


def sbatch_script(executor: SlurmExecutor) -> str:
    """The sbatch file ``executor.submit`` would write and pass to sbatch (submitit renders it with
    this private method; the command line is the one every job of the executor runs)."""
    return executor._make_submission_file_text(executor._submitit_command_str, uid="dry-run")


def local_executor(folder: Path, resources: JobResources, *, max_timeouts: int) -> submitit.LocalExecutor:
    executor = submitit.LocalExecutor(folder=folder, max_num_timeout=max_timeouts)
    executor.update_parameters(tasks_per_node=resources.tasks_per_node, gpus_per_node=resources.gpus_per_node,
                               timeout_min=resources.timeout_min)
    return executor
