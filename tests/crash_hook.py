"""A process that dies mid-epoch, for the resume tests: a hook raising after optimizer step N.

As a script it is ``vislab`` with that hook (``torchrun ... crash_hook.py STEP [--first-attempt-only]
train RECIPE k=v ...``); ``--first-attempt-only`` crashes only the attempt torchrun starts first
(``TORCHELASTIC_RESTART_COUNT`` 0), so a restart runs through.
"""
from __future__ import annotations

import os
import sys

from vislab.cli import main
from vislab.engine.hooks import Hook
from vislab.engine.trainer import Trainer


class InjectedCrash(RuntimeError):
    pass


class CrashAfterStep(Hook):
    def __init__(self, step: int):
        self.step = step

    def after_step(self, trainer, metrics) -> None:
        if trainer.step == self.step:
            raise InjectedCrash(f"injected crash after step {self.step}")


def default_hooks_then_crash(step: int):
    """A ``Trainer._default_hooks`` that appends the crash, after the checkpoint hooks."""
    default_hooks = Trainer._default_hooks

    def hooks(trainer):
        return [*default_hooks(trainer), CrashAfterStep(step)]

    return hooks


if __name__ == "__main__":
    crash_step, args = int(sys.argv[1]), sys.argv[2:]
    first_attempt_only = args[:1] == ["--first-attempt-only"]
    if first_attempt_only:
        args = args[1:]
    if not first_attempt_only or os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0":
        Trainer._default_hooks = default_hooks_then_crash(crash_step)
    sys.exit(main(args))
