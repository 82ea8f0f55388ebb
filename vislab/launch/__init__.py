"""``vislab launch``: one training run submitted through submitit, to Slurm or to this machine.

Only ``command.py`` is imported by the CLI at start-up; submitit (``pip install vislab[cluster]``)
is imported when a launch runs.
"""


class LaunchError(RuntimeError):
    """A launch that cannot be submitted as asked (bad options, no Slurm on this machine)."""
