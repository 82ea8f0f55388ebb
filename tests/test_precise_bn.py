"""Precise BatchNorm statistics (``train.precise_bn_batches``): the running averages replaced by
the average over training batches at the current weights, before every evaluation."""
from __future__ import annotations

import torch
from torch import nn

from helpers import tiny_digits_config
from vislab.engine.checkpoint import load_checkpoint
from vislab.engine.distributed import DistInfo
from vislab.engine.precise_bn import recompute_batchnorm_statistics
from vislab.engine.run import train


def test_statistics_are_the_average_over_the_batches_and_nothing_else_changes():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4, momentum=0.3))
    model.eval()
    model[1].running_mean.fill_(100.0)  # a stale average, far from the data
    batches = [{"x": torch.randn(8, 3) * (i + 1) + i} for i in range(5)]
    weights = [p.detach().clone() for p in model.parameters()]

    def train_step(module, batch, device):
        return module(batch["x"].to(device)).sum()

    used = recompute_batchnorm_statistics(model, iter(batches), num_batches=3, train_step=train_step,
                                          device=torch.device("cpu"), dist=DistInfo())
    assert used == 3
    with torch.no_grad():
        features = [model[0](b["x"]) for b in batches[:3]]
    expected_mean = torch.stack([f.mean(0) for f in features]).mean(0)
    expected_var = torch.stack([f.var(0, unbiased=True) for f in features]).mean(0)
    torch.testing.assert_close(model[1].running_mean, expected_mean)
    torch.testing.assert_close(model[1].running_var, expected_var)
    assert model[1].momentum == 0.3 and not model.training  # settings and mode restored
    assert all(torch.equal(a, b) for a, b in zip(weights, model.parameters()))
    assert all(p.grad is None for p in model.parameters())


def test_a_model_without_batchnorm_is_left_alone():
    model = nn.Sequential(nn.Linear(3, 4), nn.GroupNorm(2, 4))
    assert recompute_batchnorm_statistics(model, iter([torch.randn(2, 3)]), num_batches=1, dist=DistInfo(),
                                          train_step=lambda m, b, device: m(b), device=torch.device("cpu")) == 0


def test_training_re_estimates_before_each_evaluation_without_changing_the_weights(tmp_path):
    bn = ["model.norm=BN", "train.eval_every=1"]
    plain = train(tiny_digits_config(tmp_path / "plain", *bn))
    precise = train(tiny_digits_config(tmp_path / "precise", *bn, "train.precise_bn_batches=2"))
    plain_state, precise_state = load_checkpoint(tmp_path / "plain").model, load_checkpoint(tmp_path / "precise").model
    counts = {k: int(v) for k, v in precise_state.items() if k.endswith("num_batches_tracked")}
    assert counts and set(counts.values()) == {2}  # reset at the last evaluation, then two batches
    assert all(int(plain_state[k]) == 12 for k in counts)  # two epochs of six steps
    for key, value in plain_state.items():
        if key.endswith(("running_mean", "running_var")):
            assert not torch.equal(value, precise_state[key]), key
        elif not key.endswith("num_batches_tracked"):
            torch.testing.assert_close(value, precise_state[key], rtol=0, atol=0, msg=key)
    assert precise["final"]["val/top1"] >= 0.0
