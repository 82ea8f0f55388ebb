"""The training loop shared by every task.

A task (``vislab.tasks``) supplies the model, data loaders, the loss of a batch and the
evaluation; the trainer owns everything else: device and process group, DDP, AMP, gradient
accumulation and clipping, the optimizer and lr schedule, the non-finite-loss guard, and
checkpoint save/resume. Evaluation, checkpoint timing, logging and progress are hooks.
"""
from __future__ import annotations

import contextlib
import math
import random
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from vislab.config import to_yaml
from vislab.engine import checkpoint as ckpt
from vislab.engine import sharded_checkpoint, strategy
from vislab.engine.block_wrapping import wrap_blocks
from vislab.engine.distributed import DistInfo, all_reduce_sum, barrier, gather_object
from vislab.engine.ema import build_ema
from vislab.engine.hooks import (CheckpointHook, CurvesHook, EvalHook, Hook, MetricsWriter, MidEpochCheckpointHook,
                                 ProgressHook)
from vislab.engine.log_window import LogWindow
from vislab.engine.optim import build_optimizer
from vislab.engine.precise_bn import recompute_batchnorm_statistics
from vislab.engine.precision import autocast_context, resolve_amp
from vislab.engine.schedule import LRSchedule, apply_lr
from vislab.utils.finite import finite_outputs
from vislab.weights import WeightsError, load_state_dict


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or infinite; training stopped without saving."""


class SkippedBatchError(RuntimeError):
    """A whole batch was unreadable in a multi-process run, where every process must step."""


# settings a checkpoint's optimizer state is tied to: resuming under others cannot continue it
RESUME_FIXED_KEYS = ("optim.name", "optim.adder_optimizer", "optim.adder_lr", "optim.layer_decay",
                     "optim.decay_norm_and_bias", "train.ema_decay")


def seed_everything(*seeds: int) -> None:
    seed = hash(tuple(seeds)) % 2**32
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


class Trainer:
    def __init__(self, cfg: DictConfig, task, *, run_dir: Path, device: torch.device, dist: DistInfo):
        self.cfg = cfg
        self.task = task
        self.run_dir = run_dir
        self.device = device
        self.dist = dist
        train = cfg.train

        seed_everything(train.seed)
        model = task.build_model()
        if model_uses_syncbn(model) and dist.enabled and device.type != "cuda":
            raise ValueError("norm=SyncBN synchronises statistics across GPUs and needs CUDA in a "
                             "multi-process run; use GN (or BN) on CPU")
        if train.strategy == "fsdp":
            strategy.check_fsdp_model(model)
        self.fsdp = train.strategy == "fsdp" and dist.enabled  # one process has nothing to shard
        self.sharded_checkpoints = (train.checkpoint_format == "sharded"
                                    or (train.checkpoint_format == "auto" and self.fsdp))
        model.to(device)
        if train.channels_last:
            model.to(memory_format=torch.channels_last)
        self.model_without_ddp = model

        self.train_loader, self.train_sampler = task.build_train_loader(dist)
        self.val_loader = task.build_val_loader(dist)
        self.steps_per_epoch = self.train_sampler.batches_per_epoch // train.accumulate_steps
        if self.steps_per_epoch < 1:
            raise ValueError(f"one epoch has {self.train_sampler.batches_per_epoch} batches, fewer than "
                             f"train.accumulate_steps={train.accumulate_steps}")
        self.total_steps = train.steps if train.steps is not None else self.steps_per_epoch * train.epochs
        self.max_epochs = math.ceil(self.total_steps / self.steps_per_epoch)

        o = cfg.optim
        global_batch = cfg.data.batch_size * dist.world_size * train.accumulate_steps
        self.peak_lr = o.base_lr * global_batch / 256 if o.base_lr is not None else o.lr
        s = cfg.schedule
        warmup = s.warmup_steps if s.warmup_steps is not None else int(round(s.warmup_epochs * self.steps_per_epoch))
        self.schedule = LRSchedule(
            name=s.name, total_steps=self.total_steps, warmup_steps=warmup,
            warmup_factor=s.warmup_factor, gamma=s.gamma, min_lr_ratio=s.min_lr_ratio,
            milestones=sorted([int(round(m * self.steps_per_epoch)) for m in s.milestones] + list(s.milestone_steps)))
        self.ema = build_ema(model, decay=train.ema_decay) if train.ema_decay is not None else None
        # after the EMA's deep copy (a copied compiled forward would run this model's weights), before DDP
        wrap_blocks(model, activation_checkpointing=train.activation_checkpointing, compile_blocks=train.compile)

        self.amp = resolve_amp(amp=train.amp, amp_dtype=train.amp_dtype, device=device, warn=dist.is_main)
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.amp and train.amp_dtype == "fp16")

        self.model: nn.Module = model
        if self.fsdp:  # in place; the EMA is sharded alike, its copy taken from the unsharded model
            strategy.shard([model] + ([self.ema.module] if self.ema is not None else []), device=device,
                           world_size=dist.world_size, amp_dtype=train.amp_dtype if self.amp else None)
        elif dist.enabled:
            self.model = DistributedDataParallel(
                model, device_ids=[device.index] if device.type == "cuda" else None)
        # after sharding, which replaces the parameters its groups hold
        self.optimizer = build_optimizer(model, name=o.name, lr=self.peak_lr, weight_decay=o.weight_decay,
                                         decay_norm_and_bias=o.decay_norm_and_bias, momentum=o.momentum,
                                         nesterov=o.nesterov, betas=tuple(o.betas), eps=o.eps,
                                         layer_decay=o.layer_decay, adder_eta=o.adder_eta,
                                         adder_optimizer=o.adder_optimizer, adder_lr=o.adder_lr,
                                         adder_weight_decay=o.adder_weight_decay)

        self.checkpoints = ckpt.CheckpointDir(run_dir / "checkpoints")
        self.epoch = 0
        self.step = 0
        self.start_step = 0
        self.epoch_start_step = 0
        self.saved_step = -1  # the step of the newest checkpoint this run saved
        # a mid-epoch checkpoint resumed from: the steps it had done in its epoch, this process's RNG then
        self.resume_point: tuple[int, dict[str, Any]] | None = None
        self.log_window = LogWindow()
        self.best: dict[str, Any] | None = None
        self.last_eval: dict[str, Any] | None = None
        self._new_best = False
        self.skipped_samples = 0
        self.hooks = self._default_hooks()

    def _default_hooks(self) -> list[Hook]:
        train = self.cfg.train
        hooks: list[Hook] = [EvalHook(every=train.eval_every)]
        if self.dist.is_main:
            self.writer = MetricsWriter(self.run_dir)
            hooks += [self.writer, ProgressHook(total_steps=self.total_steps)]
        hooks.append(CheckpointHook(every=train.checkpoint_every, keep_last=train.keep_last))
        if train.checkpoint_every_steps is not None or train.checkpoint_every_minutes is not None:
            hooks.append(MidEpochCheckpointHook(every_steps=train.checkpoint_every_steps,
                                                every_minutes=train.checkpoint_every_minutes,
                                                keep_last=train.keep_last))
        if self.dist.is_main:
            hooks.append(CurvesHook(self.run_dir))
        return hooks

    @property
    def epoch_float(self) -> float:
        return self.step / self.steps_per_epoch

    @property
    def steps_into_epoch(self) -> int:
        """Optimizer steps done in the current epoch."""
        return self.step - self.epoch_start_step

    # ---------------------------------------------------------------- the loop
    def fit(self) -> dict[str, Any]:
        started = time.perf_counter()
        self.start_step = self.step
        for hook in self.hooks:
            hook.before_train(self)
        while self.epoch < self.max_epochs:
            self._train_one_epoch()
            self.epoch += 1
            for hook in self.hooks:
                hook.after_epoch(self)
        for hook in self.hooks:
            hook.after_train(self)
        last = self.checkpoints.pointer(ckpt.LAST)
        best = self.checkpoints.pointer(ckpt.BEST)
        return {"epochs": self.epoch, "steps": self.step, "seconds": time.perf_counter() - started,
                "final": self.last_eval, "best": self.best, "skipped_samples": self.skipped_samples,
                "last_checkpoint": str(last) if last else None,
                "best_checkpoint": str(best) if best else None}

    def _train_one_epoch(self) -> None:
        train = self.cfg.train
        accumulate = train.accumulate_steps
        done, resumed_rng = self.resume_point or (0, None)
        self.resume_point = None
        self.epoch_start_step = self.step - done
        self.train_sampler.set_epoch(self.epoch, start_batch=done * accumulate)
        if resumed_rng is None:
            seed_everything(train.seed, self.epoch, self.dist.rank)
            self.log_window.reset()
        self.model.train()
        batches = iter(self.train_loader)  # draws its base seed from the RNG: restore the RNG after it
        if resumed_rng is not None:
            ckpt.set_rng_state(resumed_rng)
        for _ in range(min(self.steps_per_epoch - done, self.total_steps - self.step)):
            lr = apply_lr(self.optimizer, base_lr=self.peak_lr, factor=self.schedule(self.step))
            for micro in range(accumulate):
                batch = next(batches)
                with self._gradient_sync(last_micro_batch=micro == accumulate - 1):
                    with autocast_context(self.device, enabled=self.amp, dtype=train.amp_dtype):
                        loss, num_images = self.task.train_step(self.model, batch, self.device)
                    if loss is None:  # every sample of the batch was unreadable and skipped
                        if self.dist.enabled:
                            raise SkippedBatchError(
                                f"every image of a batch on process {self.dist.rank} was unreadable at step "
                                f"{self.step + 1}; with several processes a whole batch cannot be skipped: "
                                f"remove the unreadable files (data.skip_bad counts them) and resume")
                        loss = sum(p.sum() * 0.0 for p in self.model.parameters())
                    else:
                        self._check_finite_everywhere(loss)
                    self.scaler.scale(loss / accumulate).backward()
                self.log_window.add(loss=loss.item(), images=num_images, skipped=batch.get("skipped", 0))
            if train.clip_grad_norm is not None:
                self.scaler.unscale_(self.optimizer)
                nn.utils.clip_grad_norm_(self.model.parameters(), train.clip_grad_norm)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.optimizer.zero_grad(set_to_none=True)
            if self.ema is not None:
                self.ema.update_parameters(self.model_without_ddp)
            self.step += 1
            metrics: dict[str, float] = {}
            if self.step % train.log_every == 0 or self.step == self.total_steps:
                totals = self.log_window.close(self.dist)
                self.skipped_samples += totals["skipped"]
                metrics = {"loss": totals["loss"], "lr": lr, "images_per_s": totals["images_per_s"],
                           "data/skipped": self.skipped_samples}
            for hook in self.hooks:
                hook.after_step(self, metrics)

    def _gradient_sync(self, *, last_micro_batch: bool):
        """Gradients reduced across processes once per step, in the backward of its last micro-batch:
        DDP's ``no_sync`` before it; FSDP2 accumulates unsharded gradients locally until then."""
        if self.fsdp:
            self.model.set_requires_gradient_sync(last_micro_batch)
        elif isinstance(self.model, DistributedDataParallel) and not last_micro_batch:
            return self.model.no_sync()
        return contextlib.nullcontext()

    def _last_good(self) -> str:
        last = self.checkpoints.pointer(ckpt.LAST)
        return f"the last good checkpoint is {last}" if last else "no checkpoint had been written yet"

    def _check_finite_everywhere(self, loss: torch.Tensor) -> None:
        """Stop on a NaN or infinite loss, and with several processes stop all of them together
        with the same error: each learns every process's loss (a sum where each fills its own
        slot), since one stopping alone would leave the others waiting in the gradient all-reduce."""
        losses = torch.zeros(self.dist.world_size, dtype=torch.float64)
        losses[self.dist.rank] = loss.item()
        bad = [f"{value} on process {rank}" if self.dist.enabled else f"{value}"
               for rank, value in enumerate(all_reduce_sum(losses, self.dist).tolist()) if not math.isfinite(value)]
        if bad:
            of = f" (of {self.dist.world_size} processes)" if self.dist.enabled else ""
            raise NonFiniteLossError(
                f"loss is {', '.join(bad)}{of} at step {self.step + 1} (epoch {self.epoch + 1}); training stopped "
                f"and nothing was saved after it; {self._last_good()}")

    # ---------------------------------------------------------------- evaluation
    def run_evaluation(self) -> dict[str, float]:
        """Evaluate the weights (``val/*``) and, if kept, their moving average (``val_ema/*``)."""
        models = {"val": self.model_without_ddp}
        if self.ema is not None:
            models["val_ema"] = self.ema.module
        record = {}
        if self.cfg.train.precise_bn_batches:
            with autocast_context(self.device, enabled=self.amp, dtype=self.cfg.train.amp_dtype):
                recompute_batchnorm_statistics(self.model_without_ddp, self.train_loader, dist=self.dist,
                                               num_batches=self.cfg.train.precise_bn_batches,
                                               train_step=self.task.train_step, device=self.device)
        for prefix, model in models.items():
            what = (f"the {'moving-average ' if prefix == 'val_ema' else ''}model's output at the evaluation "
                    f"after epoch {self.epoch} (step {self.step})")
            consequence = f"training stopped and this model was not saved; {self._last_good()}"
            with autocast_context(self.device, enabled=self.amp, dtype=self.cfg.train.amp_dtype), \
                    strategy.unsharded(model) if self.fsdp else contextlib.nullcontext(), \
                    finite_outputs(model, what=what, consequence=consequence):
                metrics = self.task.evaluate(model, self.val_loader, device=self.device, dist=self.dist,
                                             out_dir=self.run_dir / prefix)
            record.update({f"{prefix}/{k}": v for k, v in metrics.items()})
        self.last_eval = {"epoch": self.epoch, **record}
        key = f"val/{self.task.primary_metric}"
        self._new_best = self.best is None or record[key] > self.best["value"]
        if self._new_best:
            self.best = {"metric": key, "value": record[key], "epoch": self.epoch}
        if self.dist.is_main:
            self.writer.write({"step": self.step, "epoch": float(self.epoch), **record})
            for prefix in models:
                self.writer.write_images(self.run_dir / prefix, prefix=prefix, step=self.step)
        return record

    # ---------------------------------------------------------------- checkpoints
    def save_checkpoint(self, *, keep_last: int, mid_epoch: bool = False) -> None:
        """Save (rank 0) and wait for it (every process). A ``mid_epoch`` checkpoint, named after the
        epochs done and the step (``epoch_0001_step_00000009`` sorts between ``epoch_0001`` and
        ``epoch_0002``), is never the best one: no evaluation has seen its weights."""
        # every process's RNG and logging sums: a mid-epoch resume continues each from where it was
        per_rank = gather_object({"rng": ckpt.rng_state(), "log_window": self.log_window.state()}, self.dist)
        name = f"epoch_{self.epoch:04d}_step_{self.step:08d}" if mid_epoch else f"epoch_{self.epoch:04d}"
        metadata = {"model": self.cfg.model.name, "task": self.cfg.task, "config": to_yaml(self.cfg),
                    "epoch": self.epoch, "step": self.step, "metrics": self.last_eval, **self.task.metadata()}
        state = {"epoch": self.epoch, "step": self.step, "steps_per_epoch": self.steps_per_epoch,
                 "steps_into_epoch": self.steps_into_epoch if mid_epoch else 0, "scaler": self.scaler.state_dict(),
                 "rng": [r["rng"] for r in per_rank or []], "log_window": [r["log_window"] for r in per_rank or []],
                 "skipped_samples": self.skipped_samples, "best": self.best, "config": to_yaml(self.cfg),
                 **({"ema_updates": self.ema.n_averaged} if self.ema is not None else {})}  # rank 0's is saved
        ema_module = self.ema.module if self.ema is not None else None
        if self.sharded_checkpoints:  # every process writes its shards
            sharded_checkpoint.save(self.checkpoints, name, model=self.model_without_ddp, optimizer=self.optimizer,
                                    ema_module=ema_module, metadata=metadata, trainer_state=state,
                                    is_main=self.dist.is_main)
        elif self.fsdp:  # gathered by every process, written by rank 0
            model_state, state["optimizer"], ema_state = strategy.full_state_dicts(
                self.model, self.optimizer, ema_module=ema_module)
        elif self.dist.is_main:
            model_state, state["optimizer"] = self.model_without_ddp.state_dict(), self.optimizer.state_dict()
            ema_state = ema_module.state_dict() if ema_module is not None else None
        if self.dist.is_main:
            if not self.sharded_checkpoints:
                self.checkpoints.save(name, model_state=model_state, metadata=metadata, trainer_state=state,
                                      extra_weights={ckpt.EMA_FILE: ema_state} if ema_module is not None else {})
            if self.best_is_current and not mid_epoch:
                self.checkpoints.mark_best(name)
            self.checkpoints.prune(keep_last=keep_last)
        self.saved_step = self.step
        barrier(self.dist)

    @property
    def best_is_current(self) -> bool:
        """Whether this epoch's evaluation set a new best."""
        return self._new_best and self.last_eval is not None and self.last_eval["epoch"] == self.epoch

    def resume_from(self, path: str | Path) -> Path:
        """Continue from the checkpoint ``path`` names (``checkpoint.load_resumable``: a run folder's
        newest checkpoint that loads); returns the checkpoint folder."""
        loaded = ckpt.load_resumable(path)
        saved = OmegaConf.create(loaded.state["config"])
        changed = [f"{key} (checkpoint {OmegaConf.select(saved, key)!r}, now {OmegaConf.select(self.cfg, key)!r})"
                   for key in RESUME_FIXED_KEYS if OmegaConf.select(saved, key) != OmegaConf.select(self.cfg, key)]
        if changed:
            raise ckpt.CheckpointError(f"cannot resume {loaded.path} under other optimizer settings: "
                                       f"{'; '.join(changed)}")
        state = loaded.state
        if loaded.sharded is not None:  # model, optimizer and EMA read shard by shard
            sharded_checkpoint.load(loaded.path, model=self.model_without_ddp, optimizer=self.optimizer,
                                    ema_module=self.ema.module if self.ema is not None else None,
                                    trainer_state=state)
        else:
            self._load_full_checkpoint(loaded)
        if self.ema is not None:
            self.ema.n_averaged.copy_(state["ema_updates"])
        self.scaler.load_state_dict(state["scaler"])
        self.epoch, self.step, self.best = state["epoch"], state["step"], state["best"]
        self.skipped_samples = state.get("skipped_samples", 0)
        if state.get("steps_into_epoch", 0) > 0:
            self._resume_mid_epoch(state, path=loaded.path)
        return loaded.path

    def _load_full_checkpoint(self, loaded: ckpt.Checkpoint) -> None:
        """Model, EMA and optimizer from a full checkpoint, into a sharded model or not."""
        try:
            if self.fsdp:
                strategy.load_full_model_state(self.model, loaded.model)
            else:
                load_state_dict(self.model_without_ddp, loaded.model, strict=True, source=f"checkpoint {loaded.path}")
        except WeightsError as exc:
            raise ckpt.CheckpointError(str(exc)) from None
        if self.ema is not None:
            if loaded.ema is None:
                raise ckpt.CheckpointError(f"train.ema_decay is set but checkpoint {loaded.path} has no {ckpt.EMA_FILE}")
            if self.fsdp:
                strategy.load_full_model_state(self.ema.module, loaded.ema)
            else:
                self.ema.module.load_state_dict(loaded.ema)
        strategy.load_optimizer_state(self.model_without_ddp, self.optimizer, loaded.state["optimizer"],
                                      sharded=self.fsdp)

    def _resume_mid_epoch(self, state: dict[str, Any], *, path: Path) -> None:
        """Continue the epoch a mid-epoch checkpoint stopped in: its data order from the next unseen
        batch (``_train_one_epoch``), each process's RNG and logging sums as they were."""
        done = state["steps_into_epoch"]
        if state["steps_per_epoch"] != self.steps_per_epoch:
            raise ckpt.CheckpointError(
                f"checkpoint {path} stopped {done} steps into an epoch of "
                f"{state['steps_per_epoch']} steps, but an epoch now has {self.steps_per_epoch}: resume a "
                f"mid-epoch checkpoint with the data, batch size and process count it was saved with")
        self.log_window.restore(state["log_window"], dist=self.dist)
        if len(state["rng"]) == self.dist.world_size:
            self.resume_point = (done, state["rng"][self.dist.rank])
            return
        warnings.warn(f"checkpoint {path} was saved by {len(state['rng'])} processes, this run has "
                      f"{self.dist.world_size}: batch-level randomness (dropout, mixup) is reseeded", stacklevel=2)
        seed_everything(self.cfg.train.seed, self.epoch, self.dist.rank, self.step)
        self.resume_point = (done, ckpt.rng_state())


def model_uses_syncbn(model: nn.Module) -> bool:
    return any(isinstance(m, nn.SyncBatchNorm) for m in model.modules())
