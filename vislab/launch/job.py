"""The submitted callable: one task of a launched run, requeued with ``resume=auto`` when its job
times out or is preempted."""
from __future__ import annotations

from typing import Any

import submitit

RESUME_AUTO = "resume=auto"


class TrainJob(submitit.helpers.Checkpointable):
    """``vislab train RECIPE *overrides`` as one task of a submitit job.

    Every task of the job runs this in its own process: it exports the torch.distributed
    environment submitit derives from the job (Slurm's or the local executor's task ids), then
    runs vislab's train entry in-process, so ``init_distributed`` joins the group as under torchrun.
    ``overrides`` fix ``output_dir`` (the launcher sees to it), so every attempt of the job trains
    in the same folder.
    """

    def __init__(self, *, recipe: str, overrides: list[str]):
        self.recipe = recipe
        self.overrides = list(overrides)

    def __call__(self) -> dict[str, Any]:
        from vislab.config import load_config
        from vislab.engine.run import train

        # CUDA_VISIBLE_DEVICES stays as the job has it (every GPU of the node): vislab picks
        # cuda:LOCAL_RANK itself, and nccl sees the node's other GPUs. overwrite: the job's own
        # ranks win over any left in the environment (submitit keeps a MASTER_PORT given to it)
        submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False, overwrite=True)
        return train(load_config(self.recipe, self.overrides))

    def checkpoint(self) -> submitit.helpers.DelayedSubmission:
        """Called by submitit on rank 0 when the job receives its timeout / preemption signal: the
        job to requeue in this one's place. It resumes from the newest checkpoint of the same
        output_dir (or starts afresh if none was written yet); the steps since that checkpoint are
        trained again."""
        overrides = [item for item in self.overrides if not item.startswith("resume=")]
        requeued = TrainJob(recipe=self.recipe, overrides=[*overrides, RESUME_AUTO])
        return submitit.helpers.DelayedSubmission(requeued)
