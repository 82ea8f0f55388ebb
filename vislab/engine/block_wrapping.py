"""Activation checkpointing and ``torch.compile`` applied block by block (``train.activation_checkpointing``,
``train.compile``).

Both replace the ``forward`` of each block ``vislab.models.blocks.find_blocks`` finds, in place:
the module tree, parameter names and state dict stay as they are, so checkpoints and weights
load with or without them, and module-level wrappers applied per block later (FSDP2's
``fully_shard``, DDP) see the same modules. Their hooks run around the replaced forward.

Apply them after any deep copy of the model (the EMA, ``Trainer.__init__``): a compiled
forward is a function bound to the original block, so a copy would run the original's weights.
"""
from __future__ import annotations

import contextlib
import functools
import warnings
from typing import Any, Callable, Iterator

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from vislab.models.blocks import BLOCK_TYPES, find_blocks


def wrap_blocks(model: nn.Module, *, activation_checkpointing: bool, compile_blocks: bool) -> dict[str, nn.Module]:
    """Checkpoint and/or compile every block of ``model``; returns the blocks by name.

    With both, the checkpointed forward is what is compiled: torch.compile then decides the
    recomputation inside the block's graph (compiling a checkpoint's inner function instead
    fails in the recomputation, which runs with the compiler disabled)."""
    if not (activation_checkpointing or compile_blocks):
        return {}
    blocks = find_blocks(model)
    if not blocks:
        known = ", ".join(t.__name__ for t in BLOCK_TYPES)
        raise ValueError(f"train.activation_checkpointing / train.compile work block by block, and "
                         f"{type(model).__name__} holds none of the known blocks ({known})")
    fallback = CompileFallback() if compile_blocks else None
    for name, block in blocks.items():
        forward = block.forward
        eager = checkpointed(forward, restore_buffers_of=block) if activation_checkpointing else forward
        if fallback is None:
            block.forward = eager
        else:
            # a compiled graph updates running statistics once: its recomputation is of the
            # backward's inputs only, so no buffers to restore
            traced = checkpointed(forward, restore_buffers_of=None) if activation_checkpointing else forward
            block.forward = fallback.compiled(name=name, traced=traced, eager=eager)
    return blocks


def checkpointed(forward: Callable, *, restore_buffers_of: nn.Module | None) -> Callable:
    """``forward`` keeping only its inputs for the backward pass, which recomputes its
    activations (``torch.utils.checkpoint``, non-reentrant; the random state is replayed, so
    dropout and stochastic depth draw the same masks). Without gradients (evaluation, a
    momentum encoder) it runs as it is.

    The eager recomputation runs the block's forward a second time, in training mode, so
    BatchNorm (and the IFT layers' whitening) would move their running statistics twice per
    step, the second time with the same batch: torch's checkpoint leaves this to the caller
    (fairscale's ``checkpoint_wrapper`` patches BatchNorm for it). With ``restore_buffers_of`` the block's buffers
    are put back after the recomputation, so running statistics get one update per forward,
    as without checkpointing. SyncBatchNorm still all-reduces its batch statistics again in the
    recomputation (on every process alike)."""
    # torch.compile traces checkpoint only without a context_fn argument
    options = ({"context_fn": functools.partial(_recompute_restoring_buffers, restore_buffers_of)}
               if restore_buffers_of is not None else {})

    @functools.wraps(forward)
    def checkpointed_forward(*args: Any, **kwargs: Any) -> Any:
        if not torch.is_grad_enabled():
            return forward(*args, **kwargs)
        return checkpoint(forward, *args, use_reentrant=False, **options, **kwargs)

    return checkpointed_forward


def _recompute_restoring_buffers(module: nn.Module) -> tuple[contextlib.AbstractContextManager,
                                                             contextlib.AbstractContextManager]:
    """``checkpoint``'s pair of contexts: none for the forward, ``module``'s buffers restored
    around the recomputation (the second is entered when the recomputation starts)."""
    return contextlib.nullcontext(), _buffers_restored(module)


@contextlib.contextmanager
def _buffers_restored(module: nn.Module) -> Iterator[None]:
    saved = [(buffer, buffer.clone()) for buffer in module.buffers()]
    try:
        yield
    finally:
        with torch.no_grad():
            for buffer, value in saved:
                buffer.copy_(value)


class CompileFallback:
    """Blocks' forwards compiled with ``torch.compile`` (inductor), eager once compiling fails.

    Compilation is lazy: it happens at a block's first call (and again when shapes, dtypes or
    the training mode change). When it raises (no C++ compiler, an operation the compiler does
    not support), one warning names the block and the reason, every block run through this
    fallback is eager from then on, and the failed call is repeated eagerly, so training
    continues and an error of the model itself is still raised by the eager call. A failure
    while compiling the backward graph happens inside ``loss.backward()`` and is not caught.
    """

    def __init__(self):
        self.failed = False

    def compiled(self, *, name: str, traced: Callable, eager: Callable) -> Callable:
        """A forward running ``torch.compile(traced)`` while compiling works, else ``eager``."""
        compiled = torch.compile(traced)

        @functools.wraps(eager)
        def forward(*args: Any, **kwargs: Any) -> Any:
            if not self.failed:
                try:
                    return compiled(*args, **kwargs)
                except Exception as exc:  # any compiler failure; the eager call re-raises the model's own errors
                    self._fall_back(name=name, error=exc)
            return eager(*args, **kwargs)

        return forward

    def _fall_back(self, *, name: str, error: Exception) -> None:
        self.failed = True
        message = str(error).strip()
        reason = f"{type(error).__name__}: {message.splitlines()[0]}" if message else type(error).__name__
        warnings.warn(f"train.compile: torch.compile failed on block {name} ({reason}); every block "
                      f"runs eagerly from now on", RuntimeWarning, stacklevel=3)
