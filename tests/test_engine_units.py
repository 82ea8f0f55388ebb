"""Unit tests for the trainer's building blocks: lr schedules, optimizer parameter groups,
samplers, seeded augmentation, top-k accuracy, atomic writes and checkpoints."""
from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from vislab.data.sampler import SeededSamples, ShardSampler, TrainSampler
from vislab.data.transforms.classification import train_transform
from vislab.engine.checkpoint import (BEST, LAST, MODEL_FILE, STATE_FILE, CheckpointDir, load_checkpoint,
                                      rng_state, set_rng_state)
from vislab.engine.optim import build_optimizer, param_groups
from vislab.engine.schedule import LRSchedule, apply_lr
from vislab.evaluation.classification import TopKAccumulator, topk_correct
from vislab.utils.files import atomic_path, atomic_write_text
from vislab.weights import read_weights


# ---------------------------------------------------------------------------------------------
# Schedules
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["cosine", "step", "constant"])
def test_warmup_is_linear_from_factor_to_one(name):
    sched = LRSchedule(name=name, total_steps=100, warmup_steps=10, warmup_factor=0.1,
                       milestones=(50,), gamma=0.1)
    assert sched(0) == pytest.approx(0.1)
    values = [sched(s) for s in range(11)]
    increments = np.diff(values[:11])
    # 0.1 -> 1.0 over 10 steps: each step adds 0.09
    assert increments == pytest.approx([0.09] * 10)
    assert sched(10) == 1.0  # exactly the peak when warm-up ends
    assert all(v < 1.0 for v in values[:10])


def test_warmup_factor_one_is_flat():
    sched = LRSchedule(name="constant", total_steps=10, warmup_steps=5, warmup_factor=1.0)
    assert [sched(s) for s in range(10)] == pytest.approx([1.0] * 10)


@pytest.mark.parametrize("min_lr_ratio", [0.0, 0.05])
def test_cosine_reaches_min_at_total_steps(min_lr_ratio):
    sched = LRSchedule(name="cosine", total_steps=110, warmup_steps=10, min_lr_ratio=min_lr_ratio)
    assert sched(10) == pytest.approx(1.0)
    assert sched(60) == pytest.approx(min_lr_ratio + (1 - min_lr_ratio) * 0.5)  # half-way
    assert sched(35) == pytest.approx(min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi / 4)))
    assert sched(110) == pytest.approx(min_lr_ratio, abs=1e-12)
    assert sched(500) == pytest.approx(min_lr_ratio, abs=1e-12)  # clamped after the end
    values = [sched(s) for s in range(10, 111)]
    assert all(a >= b for a, b in zip(values, values[1:]))  # monotone decay


def test_cosine_without_warmup_starts_at_one():
    sched = LRSchedule(name="cosine", total_steps=20)
    assert sched(0) == 1.0
    assert sched(20) == pytest.approx(0.0, abs=1e-12)


def test_step_decay_at_milestones():
    sched = LRSchedule(name="step", total_steps=100, milestones=(30, 60), gamma=0.1)
    assert sched(0) == 1.0
    assert sched(29) == 1.0
    assert sched(30) == pytest.approx(0.1)
    assert sched(59) == pytest.approx(0.1)
    assert sched(60) == pytest.approx(0.01)
    assert sched(99) == pytest.approx(0.01)


def test_constant_schedule():
    sched = LRSchedule(name="constant", total_steps=10)
    assert {sched(s) for s in range(0, 30, 3)} == {1.0}


def test_unknown_schedule_raises():
    with pytest.raises(ValueError, match="poly"):
        LRSchedule(name="poly", total_steps=10)(3)


def test_apply_lr_multiplies_group_scale():
    p1, p2 = nn.Parameter(torch.zeros(2)), nn.Parameter(torch.zeros(2))
    opt = torch.optim.SGD([{"params": [p1], "lr_scale": 1.0}, {"params": [p2], "lr_scale": 0.5}], lr=1.0)
    lr = apply_lr(opt, base_lr=0.2, factor=0.5)
    assert lr == pytest.approx(0.1)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.1, 0.05])


# ---------------------------------------------------------------------------------------------
# Optimizer parameter groups
# ---------------------------------------------------------------------------------------------

class SmallNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, bias=False)
        self.bn = nn.BatchNorm2d(4)
        self.conv_b = nn.Conv2d(4, 4, 1, bias=True)
        self.gn = nn.GroupNorm(2, 4)
        self.fc = nn.Linear(4, 2)
        self.pos = nn.Parameter(torch.zeros(1, 3, 4))
        self.frozen = nn.Linear(2, 2)
        self.frozen.requires_grad_(False)

    def no_weight_decay(self):
        return {"pos"}


def _ids(params):
    return {id(p) for p in params}


def test_norm_and_bias_get_no_weight_decay():
    model = SmallNet()
    groups = param_groups(model, weight_decay=0.05, decay_norm_and_bias=False)
    assert len(groups) == 2
    decay = next(g for g in groups if g["weight_decay"] == 0.05)
    no_decay = next(g for g in groups if g["weight_decay"] == 0.0)
    assert _ids(decay["params"]) == _ids([model.conv.weight, model.conv_b.weight, model.fc.weight])
    assert _ids(no_decay["params"]) == _ids([model.bn.weight, model.bn.bias, model.conv_b.bias,
                                             model.gn.weight, model.gn.bias, model.fc.bias, model.pos])
    assert all(g["lr_scale"] == 1.0 for g in groups)
    # frozen parameters are left out entirely
    everything = _ids(decay["params"]) | _ids(no_decay["params"])
    assert id(model.frozen.weight) not in everything and id(model.frozen.bias) not in everything


def test_decay_norm_and_bias_puts_all_in_one_group():
    model = SmallNet()
    groups = param_groups(model, weight_decay=0.05, decay_norm_and_bias=True)
    assert len(groups) == 1
    assert groups[0]["weight_decay"] == 0.05
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert _ids(groups[0]["params"]) == _ids(trainable)


def test_resnet_groups_cover_every_parameter_once():
    import vislab

    model = vislab.create_model("resnet18", num_classes=10, width=0.25)
    groups = param_groups(model, weight_decay=1e-4, decay_norm_and_bias=False)
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))
    decay = groups[0]
    assert all(p.ndim == 4 or p.ndim == 2 for p in decay["params"])


def test_sgd_passes_nesterov_and_momentum():
    opt = build_optimizer(SmallNet(), name="sgd", lr=0.3, weight_decay=1e-4, decay_norm_and_bias=False,
                          momentum=0.8, nesterov=True, betas=(0.9, 0.999), eps=1e-8)
    assert isinstance(opt, torch.optim.SGD)
    assert opt.defaults["nesterov"] is True
    assert opt.defaults["momentum"] == 0.8
    assert opt.defaults["lr"] == 0.3
    assert sorted(g["weight_decay"] for g in opt.param_groups) == [0.0, 1e-4]


def test_adamw_passes_betas_and_eps():
    opt = build_optimizer(SmallNet(), name="adamw", lr=1e-3, weight_decay=0.05, decay_norm_and_bias=False,
                          momentum=0.9, nesterov=False, betas=[0.8, 0.95], eps=1e-6)
    assert isinstance(opt, torch.optim.AdamW)
    assert tuple(opt.defaults["betas"]) == (0.8, 0.95)
    assert opt.defaults["eps"] == 1e-6
    assert sorted(g["weight_decay"] for g in opt.param_groups) == [0.0, 0.05]


def test_unknown_optimizer_raises():
    with pytest.raises(ValueError, match="rmsprop"):
        build_optimizer(SmallNet(), name="rmsprop", lr=0.1, weight_decay=0.0, decay_norm_and_bias=False,
                        momentum=0.9, nesterov=False, betas=(0.9, 0.999), eps=1e-8)


# ---------------------------------------------------------------------------------------------
# Samplers
# ---------------------------------------------------------------------------------------------

def _batches(sampler: TrainSampler):
    items = list(sampler)
    assert len(items) == len(sampler)
    b = sampler.batch_size
    return [items[i:i + b] for i in range(0, len(items), b)]


@pytest.mark.parametrize("epoch", [0, 3])
def test_two_ranks_union_equals_single_process_batch(epoch):
    n, per_rank, seed = 53, 4, 7
    single = TrainSampler(n, batch_size=2 * per_rank, seed=seed)
    ranks = [TrainSampler(n, batch_size=per_rank, seed=seed, rank=r, world_size=2) for r in range(2)]
    for s in (single, *ranks):
        s.set_epoch(epoch)
    single_batches = _batches(single)
    rank_batches = [_batches(s) for s in ranks]
    assert len(single_batches) == len(rank_batches[0]) == len(rank_batches[1]) == n // 8
    for b, full in enumerate(single_batches):
        r0, r1 = rank_batches[0][b], rank_batches[1][b]
        assert r0 + r1 == full  # same (index, seed) pairs, rank 0 holding the first half
        assert not set(i for i, _ in r0) & set(i for i, _ in r1)


def test_sampler_indices_are_a_permutation_prefix():
    sampler = TrainSampler(20, batch_size=6, seed=0)
    indices = [i for i, _ in sampler]
    assert len(indices) == 18  # 3 full batches; the last 2 samples are dropped
    assert len(set(indices)) == 18
    assert set(indices) <= set(range(20))


def test_sampler_epochs_differ_and_repeat():
    a = TrainSampler(40, batch_size=8, seed=1)
    b = TrainSampler(40, batch_size=8, seed=1)
    a.set_epoch(0)
    epoch0 = list(a)
    a.set_epoch(1)
    epoch1 = list(a)
    b.set_epoch(1)
    assert epoch0 != epoch1
    assert [i for i, _ in epoch0] != [i for i, _ in epoch1]
    assert list(b) == epoch1  # same seed and epoch: identical
    assert list(a) == epoch1  # iterating again replays the epoch
    other_seed = TrainSampler(40, batch_size=8, seed=2)
    other_seed.set_epoch(1)
    assert list(other_seed) != epoch1


def test_sample_seeds_match_across_world_sizes():
    n, seed = 48, 5
    single = list(TrainSampler(n, batch_size=12, seed=seed))
    four = [list(TrainSampler(n, batch_size=3, seed=seed, rank=r, world_size=4)) for r in range(4)]
    seed_of = dict(single)
    for items in four:
        for index, sample_seed in items:
            assert seed_of[index] == sample_seed
    # and the seeds of a single epoch are not all the same
    assert len({s for _, s in single}) == len(single)


def test_train_sampler_rejects_an_empty_set():
    with pytest.raises(ValueError, match="empty"):
        TrainSampler(0, batch_size=4, seed=0, world_size=2)


@pytest.mark.parametrize("n, world", [(10, 3), (7, 1), (5, 8)])
def test_shard_sampler_covers_all_indices_once(n, world):
    shards = [list(ShardSampler(n, rank=r, world_size=world)) for r in range(world)]
    flat = [i for s in shards for i in s]
    assert sorted(flat) == list(range(n))
    assert sum(len(ShardSampler(n, rank=r, world_size=world)) for r in range(world)) == n


# ---------------------------------------------------------------------------------------------
# Seeded augmentation
# ---------------------------------------------------------------------------------------------

def _image_dataset():
    rng = np.random.default_rng(0)
    return [(Image.fromarray(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)), k) for k in range(3)]


def _samples():
    transform = train_transform(image_size=16, crop_scale=[0.1, 1.0], hflip=True,
                                mean=[0.5, 0.5, 0.5], std=[0.25, 0.25, 0.25])
    return SeededSamples(_image_dataset(), transform)


def test_seeded_samples_same_key_same_tensor():
    samples = _samples()
    first, label = samples[(1, 123456789)]
    torch.rand(100)  # advance the global RNG
    torch.manual_seed(999)
    second, label2 = samples[(1, 123456789)]
    assert label == label2 == 1
    assert first.shape == (3, 16, 16)
    assert torch.equal(first, second)


def test_seeded_samples_different_seeds_differ():
    samples = _samples()
    outputs = [samples[(0, s)][0] for s in range(6)]
    assert any(not torch.equal(outputs[0], o) for o in outputs[1:])


def test_seeded_samples_leave_global_rng_untouched():
    samples = _samples()
    torch.manual_seed(3)
    before = torch.get_rng_state()
    samples[(2, 42)]
    assert torch.equal(torch.get_rng_state(), before)


# ---------------------------------------------------------------------------------------------
# Top-k accuracy
# ---------------------------------------------------------------------------------------------

def test_topk_correct_hand_example():
    logits = torch.tensor([
        [0.1, 0.9, 0.0, 0.3],  # ranking 1, 3, 0, 2
        [0.8, 0.1, 0.5, 0.2],  # ranking 0, 2, 3, 1
        [0.2, 0.3, 0.4, 0.1],  # ranking 2, 1, 0, 3
    ])
    labels = torch.tensor([1, 2, 3])
    # row 0: top1 hit; row 1: label at rank 2; row 2: label last
    assert topk_correct(logits, labels, [1, 2, 3, 4]).tolist() == [1, 2, 2, 3]


def test_topk_accumulator_clips_k_to_num_classes():
    acc = TopKAccumulator(num_classes=3, ks=(1, 5))
    assert acc.ks == [1, 3]
    assert acc.names == ["top1", "top5"]
    logits = torch.tensor([[3.0, 2.0, 1.0], [0.0, 1.0, 2.0], [1.0, 5.0, 0.0], [0.0, 0.0, 9.0]])
    labels = torch.tensor([0, 0, 1, 1])
    acc.update(logits, labels)
    acc.update(logits[:1], labels[:1])
    result = TopKAccumulator.result(acc.names, acc.state())
    assert result["top1"] == pytest.approx(3 / 5)
    assert result["top5"] == pytest.approx(1.0)  # every label is within all 3 classes
    assert acc.state().tolist() == [3.0, 5.0, 5.0]


def test_topk_result_of_empty_state_is_zero():
    acc = TopKAccumulator(num_classes=10)
    assert TopKAccumulator.result(acc.names, acc.state()) == {"top1": 0.0, "top5": 0.0}


# ---------------------------------------------------------------------------------------------
# Atomic writes
# ---------------------------------------------------------------------------------------------

def test_atomic_path_keeps_old_content_on_error(tmp_path):
    target = tmp_path / "file.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_path(target) as tmp:
            assert tmp != target and tmp.parent == target.parent
            tmp.write_text("new, half-written")
            raise RuntimeError("boom")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.txt"]


def test_atomic_path_replaces_on_success(tmp_path):
    target = tmp_path / "sub" / "file.txt"
    with atomic_path(target) as tmp:
        tmp.write_text("first")
    atomic_write_text(target, "second")
    assert target.read_text() == "second"
    assert sorted(p.name for p in target.parent.iterdir()) == ["file.txt"]


# ---------------------------------------------------------------------------------------------
# Checkpoints and RNG state
# ---------------------------------------------------------------------------------------------

def _model_state(value: float):
    return {"w": torch.full((2, 3), value), "b": torch.arange(3, dtype=torch.float32)}


def test_checkpoint_save_layout_and_last_pointer(tmp_path):
    ckpts = CheckpointDir(tmp_path / "checkpoints")
    path = ckpts.save("epoch_0001", model_state=_model_state(1.0), metadata={"epoch": 1},
                      trainer_state={"step": 10, "epoch": 1, "rng": rng_state()})
    assert path == tmp_path / "checkpoints" / "epoch_0001"
    assert (path / MODEL_FILE).is_file() and (path / STATE_FILE).is_file()
    assert (tmp_path / "checkpoints" / LAST).read_text().strip() == "epoch_0001"
    assert ckpts.pointer(LAST) == path
    assert ckpts.pointer(BEST) is None
    # no hidden temporary folders are left behind
    assert [p.name for p in (tmp_path / "checkpoints").iterdir() if p.name.startswith(".")] == []

    second = ckpts.save("epoch_0002", model_state=_model_state(2.0), metadata={"epoch": 2},
                        trainer_state={"step": 20})
    assert ckpts.pointer(LAST) == second
    tensors, metadata = read_weights(second / MODEL_FILE)
    assert torch.equal(tensors["w"], torch.full((2, 3), 2.0))
    assert metadata == {"epoch": 2}


def test_checkpoint_state_loads_with_weights_only(tmp_path):
    ckpts = CheckpointDir(tmp_path)
    state = {"step": 5, "best": 0.75, "name": "x", "optimizer": {"lr": [0.1, 0.2]},
             "rng": rng_state(), "t": torch.ones(3)}
    path = ckpts.save("epoch_0005", model_state=_model_state(0.5), metadata={}, trainer_state=state)
    loaded = torch.load(path / STATE_FILE, weights_only=True)
    assert loaded["step"] == 5 and loaded["best"] == 0.75 and loaded["name"] == "x"
    assert torch.equal(loaded["t"], torch.ones(3))
    assert torch.equal(loaded["rng"]["torch"], state["rng"]["torch"])
    ckpt = load_checkpoint(tmp_path)  # resolves through the last pointer
    assert ckpt.path == path
    assert ckpt.state["step"] == 5


def test_checkpoint_resave_same_name_replaces(tmp_path):
    ckpts = CheckpointDir(tmp_path)
    ckpts.save("epoch_0001", model_state=_model_state(1.0), metadata={}, trainer_state={"step": 1})
    ckpts.save("epoch_0001", model_state=_model_state(9.0), metadata={}, trainer_state={"step": 2})
    tensors, _ = read_weights(tmp_path / "epoch_0001" / MODEL_FILE)
    assert torch.equal(tensors["w"], torch.full((2, 3), 9.0))


@pytest.mark.parametrize("keep_last, expected", [
    (1, ["epoch_0002", "epoch_0005"]),
    (2, ["epoch_0002", "epoch_0004", "epoch_0005"]),
    (10, ["epoch_0001", "epoch_0002", "epoch_0003", "epoch_0004", "epoch_0005"]),
])
def test_prune_keeps_best_and_newest(tmp_path, keep_last, expected):
    ckpts = CheckpointDir(tmp_path)
    for epoch in range(1, 6):
        ckpts.save(f"epoch_{epoch:04d}", model_state=_model_state(float(epoch)), metadata={},
                   trainer_state={"epoch": epoch})
        if epoch == 2:
            ckpts.mark_best("epoch_0002")
    ckpts.prune(keep_last=keep_last)
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == expected
    assert ckpts.pointer(BEST) == tmp_path / "epoch_0002"
    assert ckpts.pointer(LAST) == tmp_path / "epoch_0005"


def _draws():
    return (torch.rand(4), torch.randint(0, 1000, (3,)), np.random.rand(3), np.random.randn(2),
            random.random(), random.randint(0, 10**9), random.gauss(0, 1))


def _assert_same_draws(a, b):
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    np.testing.assert_array_equal(a[2], b[2])
    np.testing.assert_array_equal(a[3], b[3])
    assert a[4:] == b[4:]


def test_rng_state_round_trip_reproduces_draws():
    torch.manual_seed(1)
    np.random.seed(1)
    random.seed(1)
    np.random.randn()  # leave numpy with a cached gaussian
    random.gauss(0, 1)  # and python with one
    state = rng_state()
    first = _draws()
    _draws()  # move every generator on
    set_rng_state(state)
    _assert_same_draws(first, _draws())


def test_rng_state_round_trip_through_state_file(tmp_path):
    torch.manual_seed(2)
    np.random.seed(2)
    random.seed(2)
    ckpts = CheckpointDir(tmp_path)
    path = ckpts.save("epoch_0001", model_state=_model_state(0.0), metadata={},
                      trainer_state={"rng": rng_state()})
    first = _draws()
    torch.manual_seed(123)
    np.random.seed(123)
    random.seed(123)
    set_rng_state(torch.load(path / STATE_FILE, weights_only=True)["rng"])
    _assert_same_draws(first, _draws())
