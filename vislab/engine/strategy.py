"""FSDP2 for ``train.strategy=fsdp``: each block sharded across the processes, then the root.

``torch.distributed.fsdp.fully_shard`` replaces a module's parameters with DTensor shards in
place, so the optimizer is built after ``shard`` (its param groups then hold the shards), and a
copy meant to stay a replica of the unsharded model (the EMA, MoCo's momentum encoder) is taken
before it. The EMA copy is sharded the same way, so its update is a local lerp of shards.

Checkpoints stay in the format every other run writes: rank 0 gathers full state dicts (model,
EMA and optimizer, on the CPU) and saves them in one ``CheckpointDir`` folder; loading
broadcasts rank 0's tensors and each process keeps its shard. So an FSDP checkpoint resumes
under any process count and strategy, and its ``model.safetensors`` holds plain tensors.
"""
from __future__ import annotations

import contextlib
from typing import Any, Iterator

import torch
from torch import nn
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                     get_optimizer_state_dict, set_model_state_dict,
                                                     set_optimizer_state_dict)
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard

from vislab.models.blocks import find_blocks
from vislab.weights import WeightsError

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
GATHER = StateDictOptions(full_state_dict=True, cpu_offload=True)  # rank 0 gets all, the others {}
SCATTER = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True)


def check_fsdp_model(model: nn.Module) -> None:
    """FSDP shards parameters but leaves BatchNorm's batch statistics per process (DDP does the
    same, but a BN model under FSDP is usually one too large for the per-GPU batches BN needs)."""
    norms = sorted({type(m).__name__ for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)})
    if norms:
        raise ValueError(f"train.strategy=fsdp: {type(model).__name__} has {', '.join(norms)} layers, whose "
                         f"statistics FSDP does not synchronise across processes; use GN or LN "
                         f"(model.norm=GN), or train.strategy=ddp")


def shard(modules: list[nn.Module], *, device: torch.device, world_size: int, amp_dtype: str | None) -> None:
    """``fully_shard`` every block (``find_blocks``) of each module, then the module, over one 1-D
    mesh of all processes. With ``amp_dtype`` parameters are gathered in that dtype for the
    forward and backward, and gradients reduced in float32."""
    mesh = init_device_mesh(device.type, (world_size,))
    policy = (MixedPrecisionPolicy(param_dtype=AMP_DTYPES[amp_dtype], reduce_dtype=torch.float32)
              if amp_dtype is not None else MixedPrecisionPolicy())
    for module in modules:
        for block in find_blocks(module).values():
            fully_shard(block, mesh=mesh, mp_policy=policy, reshard_after_forward=True)
        # the root's parameters stay gathered from its forward to its backward (FSDP2's default)
        fully_shard(module, mesh=mesh, mp_policy=policy, reshard_after_forward=False)


@contextlib.contextmanager
def unsharded(model: nn.Module) -> Iterator[None]:
    """Every parameter of a sharded ``model`` gathered for the duration, so forwards issue no
    collectives: evaluation shards are uneven, and a process running one batch more would wait
    forever on the others' all-gather. Memory is that of the unsharded model, as under DDP."""
    modules = [m for m in model.modules() if isinstance(m, FSDPModule)]
    for module in modules:
        module.set_reshard_after_forward(False, recurse=False)
        module.unshard()
    try:
        yield
    finally:
        for module in modules:
            module.reshard()
            module.set_reshard_after_forward(module is not model, recurse=False)


def full_state_dicts(model: nn.Module, optimizer: torch.optim.Optimizer, *,
                     ema_module: nn.Module | None) -> tuple[dict, dict, dict | None]:
    """The full model, optimizer (keyed by parameter name) and EMA state dicts on rank 0, empty on
    the others; a collective: every process calls it."""
    ema = get_model_state_dict(ema_module, options=GATHER) if ema_module is not None else None
    return (get_model_state_dict(model, options=GATHER), get_optimizer_state_dict(model, optimizer, options=GATHER),
            ema)


def load_full_model_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load a full state dict into a sharded ``model`` (every process; rank 0's tensors are used)."""
    try:
        set_model_state_dict(model, state, options=SCATTER)
    except RuntimeError as exc:  # missing or unexpected keys, shapes that differ
        raise WeightsError(f"the checkpoint does not fit {type(model).__name__}: {exc}") from None


def load_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any], *,
                         sharded: bool) -> None:
    """Load an optimizer state dict saved by either strategy: keyed by parameter index
    (``optimizer.state_dict()``, DDP and single runs) or by name (``full_state_dicts``, FSDP)."""
    names = _names_in_optimizer_order(model, optimizer)
    by_name = any(isinstance(key, str) for group in state["param_groups"] for key in group["params"])
    if sharded:
        set_optimizer_state_dict(model, optimizer, state if by_name else _rekey(state, names), options=SCATTER)
    else:
        optimizer.load_state_dict(_rekey(state, {name: i for i, name in enumerate(names)}) if by_name else state)


def _names_in_optimizer_order(model: nn.Module, optimizer: torch.optim.Optimizer) -> list[str]:
    name_of = {id(p): name for name, p in model.named_parameters()}
    return [name_of[id(p)] for group in optimizer.param_groups for p in group["params"]]


def _rekey(state: dict[str, Any], key_of) -> dict[str, Any]:
    """``state`` with parameter keys mapped through ``key_of`` (a list or dict)."""
    return {"state": {key_of[key]: value for key, value in state["state"].items()},
            "param_groups": [{**group, "params": [key_of[key] for key in group["params"]]}
                             for group in state["param_groups"]]}
