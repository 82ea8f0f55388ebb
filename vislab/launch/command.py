"""``vislab launch [options] -- train RECIPE k=v ...``: the arguments and the command's body.

The run's ``output_dir`` is fixed here, at submission, so that every attempt of the job (the first
and each requeued one) trains in the same folder; submitit's job folder (pickles, logs) defaults
to ``<output_dir>/submitit``.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from vislab.launch import LaunchError

LOCAL_TIMEOUT_MIN = 7 * 24 * 60  # --executor local without --timeout-min: a week
LAUNCH_HELP = ("Submit a training run through submitit: to Slurm on many nodes (requeued and resumed on timeout or "
               "preemption), or as the same job on this machine.")


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a positive integer")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text} is negative")
    return value


def add_launch_arguments(parser: argparse.ArgumentParser) -> None:
    parser.usage = "vislab launch [options] -- train RECIPE [key=value ...]"
    parser.add_argument("--executor", choices=["slurm", "local"], default="slurm",
                        help="slurm: submit with sbatch; local: run the same job on this machine and wait for it")
    parser.add_argument("--nodes", type=_positive_int, default=1)
    parser.add_argument("--gpus-per-node", type=_non_negative_int, default=0,
                        help="one process per GPU (nccl); 0: CPU processes (gloo)")
    parser.add_argument("--tasks-per-node", type=_positive_int,
                        help="processes per node (default: --gpus-per-node, or 1 on CPU)")
    parser.add_argument("--timeout-min", type=_positive_int,
                        help="the job's time limit; required for slurm (local default: a week)")
    parser.add_argument("--partition")
    parser.add_argument("--account")
    parser.add_argument("--constraint", help="Slurm node features, e.g. a100")
    parser.add_argument("--mem-gb", type=_positive_int, help="memory per node")
    parser.add_argument("--cpus-per-task", type=_positive_int)
    parser.add_argument("--max-timeouts", type=_non_negative_int, default=3,
                        help="times the job may requeue itself on reaching its time limit (preemptions do not count)")
    parser.add_argument("--folder", help="submitit's job folder: pickles and logs (default: <output_dir>/submitit)")
    parser.add_argument("--dry-run", action="store_true", help="print the sbatch script (or local job) and submit nothing")
    parser.add_argument("--wait", action="store_true",
                        help="slurm: wait for the job to end, requeues included (`vislab study --launch` does)")
    parser.add_argument("command_line", nargs="+", metavar="-- train RECIPE k=v",
                        help="the training run, as `vislab train` takes it")


def _train_command(command_line: list[str]) -> tuple[str, list[str]]:
    """RECIPE and overrides from ``train RECIPE k=v ...``."""
    words = command_line[1:] if command_line[0] == "--" else command_line
    if len(words) < 2 or words[0] != "train":
        raise LaunchError(f"vislab launch runs `-- train RECIPE k=v ...`, not `{' '.join(words)}`")
    recipe, overrides = words[1], words[2:]
    not_overrides = [word for word in overrides if "=" not in word or word.startswith("-")]
    if not_overrides:
        raise LaunchError(f"after the recipe only key=value overrides may follow, not {' '.join(not_overrides)}")
    return str(Path(recipe).absolute()), overrides


def _fix_output_dir(recipe: str, overrides: list[str]) -> tuple[Path, list[str]]:
    """The run folder every attempt of the job uses, and the overrides that name it. The config is
    loaded here so that a bad key fails now rather than in the queue."""
    from vislab.config import load_config
    from vislab.engine.run import RUN_FILES, RUNS_ROOT

    cfg = load_config(recipe, overrides)
    if cfg.output_dir:
        output_dir = Path(cfg.output_dir).absolute()
    elif cfg.resume:
        raise LaunchError("vislab launch with resume needs output_dir=RUN_FOLDER (the run to continue)")
    else:
        output_dir = (RUNS_ROOT / (cfg.recipe or "run") / time.strftime("%Y%m%d-%H%M%S")).absolute()
    found = [name for name in RUN_FILES if (output_dir / name).exists()]
    if found and not cfg.resume:
        raise LaunchError(f"{output_dir} already holds a run ({', '.join(found)}); pass resume=true to "
                          f"continue it or choose another output_dir")
    kept = [item for item in overrides if not item.startswith("output_dir=")]
    return output_dir, [*kept, f"output_dir={output_dir}"]


def _tasks_per_node(args) -> int:
    if args.gpus_per_node == 0:
        return args.tasks_per_node or 1
    if args.tasks_per_node not in (None, args.gpus_per_node):
        raise LaunchError(f"one process per GPU: --tasks-per-node {args.tasks_per_node} must equal "
                          f"--gpus-per-node {args.gpus_per_node} (or be left out)")
    return args.gpus_per_node


def _print_summary(summary: dict) -> None:
    metrics = ", ".join(f"{key.removeprefix('val/')} {value:.4f}" for key, value in (summary.get("final") or {}).items()
                        if key.startswith("val/"))
    print(f"finished: {summary['epochs']} epochs, {summary['steps']} steps in {summary['seconds']:.1f} s"
          + (f"; val {metrics}" if metrics else "") + f"; run {summary['run_dir']}")


def _job_error(exc: Exception) -> str:
    """The last line of the task's traceback in submitit's message, which follows the traceback
    with a line of dashes and the log paths."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    rulers = [index for index, line in enumerate(lines) if set(line) == {"-"}]
    before_ruler = lines[:rulers[-1]] if rulers else lines
    return before_ruler[-1] if before_ruler else "no message"


def launch_command(args) -> int:
    recipe, overrides = _train_command(args.command_line)
    tasks_per_node = _tasks_per_node(args)
    if args.executor == "slurm" and args.timeout_min is None:
        raise LaunchError("--executor slurm needs --timeout-min (the job requeues itself when it runs out)")
    if args.executor == "local" and args.nodes != 1:
        raise LaunchError(f"--executor local runs on this machine only: --nodes must be 1, not {args.nodes}")
    output_dir, overrides = _fix_output_dir(recipe, overrides)
    folder = Path(args.folder).absolute() if args.folder else output_dir / "submitit"
    try:
        import submitit
    except ImportError:
        raise LaunchError("vislab launch needs submitit: pip install 'vislab[cluster]'") from None
    from vislab.launch.executors import JobResources, local_executor, sbatch_script, slurm_executor
    from vislab.launch.job import TrainJob

    resources = JobResources(nodes=args.nodes, gpus_per_node=args.gpus_per_node, tasks_per_node=tasks_per_node,
                             timeout_min=args.timeout_min or LOCAL_TIMEOUT_MIN, job_name=f"vislab-{Path(recipe).stem}",
                             partition=args.partition, account=args.account, constraint=args.constraint,
                             mem_gb=args.mem_gb, cpus_per_task=args.cpus_per_task)
    train_line = " ".join(["vislab train", recipe, *overrides])
    if args.dry_run:
        print(f"# dry run, nothing submitted; each of the {args.nodes * tasks_per_node} tasks runs: {train_line}")
        print(f"# run folder: {output_dir}\n# job folder: {folder}")
        if args.executor == "slurm":
            executor = slurm_executor(folder, resources, max_timeouts=args.max_timeouts, render_only=True)
            print(sbatch_script(executor))
        else:
            print(f"# local job: {tasks_per_node} tasks, {args.gpus_per_node} GPUs, time limit "
                  f"{resources.timeout_min} min")
        return 0
    if args.executor == "slurm":
        executor = slurm_executor(folder, resources, max_timeouts=args.max_timeouts)
    else:
        executor = local_executor(folder, resources, max_timeouts=args.max_timeouts)
    with submitit.helpers.clean_env():  # a launch from inside a job must not pass on its ranks
        job = executor.submit(TrainJob(recipe=recipe, overrides=overrides))
    print(f"submitted job {job.job_id} ({args.executor}, {args.nodes} node(s) x {tasks_per_node} tasks): {train_line}")
    print(f"run folder: {output_dir}\nlogs: {job.paths.stdout.with_name(f'{job.job_id}_<task>_log.out')} (and .err)")
    if args.executor == "slurm" and not args.wait:
        return 0
    try:
        summaries = job.results()
    except KeyboardInterrupt:
        job.cancel()
        raise
    except submitit.core.utils.UncompletedJobError as exc:
        raise LaunchError(f"job {job.job_id} failed: {_job_error(exc)} (logs in {folder})") from None
    _print_summary(summaries[0])
    return 0
