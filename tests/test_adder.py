"""Adder layers (vislab/layers/adder.py), AdderNet's adaptive lr scaling (engine/optim.py), the
adder ResNets and the operation / energy count (models/complexity.py)."""
from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import vislab
from helpers import tiny_digits_config
from vislab.engine.optim import build_optimizer, param_groups
from vislab.engine.run import train
from vislab.layers.adder import AdderConv2d, AdderLinear, adder, adder_weights
from vislab.models.complexity import energy_mj, on_meta, operation_counts
from vislab.weights import read_weights


def reference_adder_conv(x: torch.Tensor, weight: torch.Tensor, *, stride: int, padding: int) -> torch.Tensor:
    """The official AdderNet formulation: unfold, broadcast the (out, in*k*k, positions) difference."""
    batch, _, height, width = x.shape
    out_channels, _, k, _ = weight.shape
    out_h, out_w = (height + 2 * padding - k) // stride + 1, (width + 2 * padding - k) // stride + 1
    columns = F.unfold(x, k, padding=padding, stride=stride).permute(1, 2, 0).reshape(weight[0].numel(), -1)
    out = -(weight.view(out_channels, -1)[:, :, None] - columns[None]).abs().sum(1)
    return out.view(out_channels, out_h, out_w, batch).permute(3, 0, 1, 2)


@pytest.mark.parametrize("stride, padding", [(1, 1), (2, 0)])
@pytest.mark.parametrize("input_grad", ["hardtanh", "sign"])
def test_adder_conv_matches_the_reference_formulation_and_its_gradients(stride, padding, input_grad):
    torch.manual_seed(0)
    x = torch.randn(2, 3, 7, 7, dtype=torch.float64, requires_grad=True)
    layer = AdderConv2d(3, 4, 3, stride=stride, padding=padding, input_grad=input_grad).double()
    out = layer(x)
    torch.testing.assert_close(out, reference_adder_conv(x, layer.weight, stride=stride, padding=padding))
    grad = torch.randn_like(out)
    out.backward(grad)
    # AdderNet's rules written out: dW = sum (X - W) g (eq. 5), dX = sum HT(W - X) g (eq. 6) or sign
    rows = F.unfold(x.detach(), 3, padding=padding, stride=stride).transpose(1, 2).reshape(-1, 27)
    g = grad.permute(0, 2, 3, 1).reshape(-1, 4)
    w = layer.weight.detach().view(4, -1)
    expected_w = ((rows[:, None] - w[None]) * g[:, :, None]).sum(0)
    torch.testing.assert_close(layer.weight.grad.view(4, -1), expected_w)
    diff = w[None] - rows[:, None]
    diff = diff.clamp(-1, 1) if input_grad == "hardtanh" else diff.sign()
    columns = (diff * g[:, :, None]).sum(1).view(2, -1, 27).transpose(1, 2)
    torch.testing.assert_close(x.grad, F.fold(columns, (7, 7), 3, padding=padding, stride=stride))


def test_sign_input_gradient_passes_gradcheck():
    """With ``input_grad="sign"`` the input gradient is the exact derivative of -|x - w|."""
    torch.manual_seed(1)
    x = torch.randn(5, 6, dtype=torch.float64, requires_grad=True)
    w = torch.randn(3, 6, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda a: adder(a, w, input_grad="sign"), (x,))


def test_adder_conv_groups_and_dilation_match_per_group_reference():
    torch.manual_seed(2)
    x = torch.randn(1, 4, 9, 9)
    layer = AdderConv2d(4, 6, 3, padding=2, dilation=2, groups=2)
    out = layer(x)
    for group in range(2):
        columns = F.unfold(x[:, 2 * group:2 * group + 2], 3, dilation=2, padding=2)[0].t()  # (L, J)
        weight = layer.weight[3 * group:3 * group + 3].flatten(1)
        expected = -(columns[:, None] - weight[None]).abs().sum(-1).t().reshape(3, 9, 9)
        torch.testing.assert_close(out[0, 3 * group:3 * group + 3], expected)


def test_centred_adder_conv_subtracts_each_groups_channel_mean_and_differentiates_through_it():
    torch.manual_seed(3)
    x = torch.randn(2, 4, 6, 6, dtype=torch.float64, requires_grad=True)
    layer = AdderConv2d(4, 6, 3, padding=1, groups=2, input_grad="sign", center=True, init="normal").double()
    out = layer(x)
    grouped = out.view(2, 2, 3, 6, 6)
    torch.testing.assert_close(grouped.mean(2), torch.zeros(2, 2, 6, 6, dtype=torch.float64))
    plain = AdderConv2d(4, 6, 3, padding=1, groups=2, input_grad="sign").double()
    plain.weight = layer.weight
    expected = plain(x).view(2, 2, 3, 6, 6)
    torch.testing.assert_close(grouped, expected - expected.mean(2, keepdim=True))
    assert torch.autograd.gradcheck(lambda a: layer(a), (x,))  # the sign gradient is exact, centring too


def test_centring_removes_the_common_part_of_an_adder_layers_outputs():
    """On rectified inputs, weights small beside the inputs give output channels that are copies of
    one signal (``-sum |x|``); centring leaves them nearly uncorrelated."""
    torch.manual_seed(0)
    x = torch.relu(torch.randn(8, 16, 12, 12))

    def mean_abs_correlation(layer: AdderConv2d) -> float:
        with torch.no_grad():
            channels = layer(x).transpose(0, 1).reshape(16, -1)
        correlation = torch.corrcoef(channels)
        return correlation[~torch.eye(16, dtype=torch.bool)].abs().mean().item()

    assert mean_abs_correlation(AdderConv2d(16, 16, 3, padding=1)) > 0.99
    assert mean_abs_correlation(AdderConv2d(16, 16, 3, padding=1, center=True)) < 0.2
    assert abs(AdderConv2d(16, 16, 3, init="normal").weight.std().item() - 1.0) < 0.05  # AdderNet's N(0, 1)


def test_centred_kinds_reach_every_adder_layer_of_a_detector():
    model = vislab.create_model("adder_fcos_r18_rpafpn_small", num_classes=3,
                                backbone_options={"width": 0.5, "conv": "adder_sign_centered"},
                                neck_conv="adder_sign_centered")
    adders = [m for m in model.modules() if isinstance(m, AdderConv2d)]
    assert adders and all(m.center and m.input_grad == "sign" for m in adders)
    assert any(m.center for m in model.backbone.modules() if isinstance(m, AdderConv2d))
    with pytest.raises(ValueError, match="init='xavier'"):
        AdderConv2d(2, 2, 1, init="xavier")


def test_adder_linear_is_negative_l1_distance():
    layer = AdderLinear(3, 2)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[0.0, 1.0, 2.0], [1.0, 1.0, 1.0]]))
    out = layer(torch.tensor([[1.0, 1.0, 1.0]]))
    torch.testing.assert_close(out, torch.tensor([[-2.0, 0.0]]))


def test_adaptive_scaling_gives_each_adder_layer_gradient_norm_eta_sqrt_k():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), AdderConv2d(4, 5, 3), nn.BatchNorm2d(5))
    groups = param_groups(model, weight_decay=0.0, decay_norm_and_bias=False, adder_eta=0.2)
    assert [g.get("adder_eta") for g in groups].count(0.2) == 1
    assert adder_weights(model) == [model[1].weight]
    optimizer = build_optimizer(model, name="sgd", lr=1.0, weight_decay=0.0, decay_norm_and_bias=False, momentum=0.0,
                                nesterov=False, betas=(0.9, 0.999), eps=1e-8, adder_eta=0.2)
    model(torch.randn(2, 3, 8, 8)).square().sum().backward()
    conv_grad = model[0].weight.grad.clone()
    before = model[1].weight.detach().clone()
    optimizer.step()
    scaled = model[1].weight.grad
    torch.testing.assert_close(scaled.norm(), torch.tensor(0.2 * math.sqrt(model[1].weight.numel())))
    torch.testing.assert_close(model[1].weight.detach(), before - scaled)  # the step used the scaled gradient
    torch.testing.assert_close(model[0].weight.grad, conv_grad)  # convolutions keep theirs


def _adder_pair() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), AdderConv2d(4, 5, 3), nn.BatchNorm2d(5))


def _mixed_optimizer(model: nn.Module) -> torch.optim.Optimizer:
    return build_optimizer(model, name="adamw", lr=1e-3, weight_decay=0.05, decay_norm_and_bias=False,
                           momentum=0.9, nesterov=False, betas=(0.9, 0.999), eps=1e-8, adder_eta=2.0,
                           adder_optimizer="sgd", adder_lr=0.01, adder_weight_decay=1e-4)


def _train(model: nn.Module, optimizer: torch.optim.Optimizer, *, steps: int, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        optimizer.zero_grad()
        model(torch.randn(2, 3, 8, 8, generator=generator)).square().mean().backward()
        optimizer.step()


def test_adder_weights_take_their_own_optimizer_lr_and_weight_decay():
    """optim.adder_optimizer=sgd under adamw: the adder weight steps exactly as torch's SGD (momentum,
    its lr and weight decay, the scaled gradient), everything else exactly as torch's AdamW."""
    model, twin = _adder_pair(), _adder_pair()
    optimizer = _mixed_optimizer(model)
    adder_groups = [g for g in optimizer.param_groups if "adder_eta" in g]
    assert [(g["optimizer"], g["lr"], g["weight_decay"]) for g in adder_groups] == [("sgd", 0.01, 1e-4)]
    rest = [p for name, p in twin.named_parameters() if name != "1.weight"]
    sgd = torch.optim.SGD([twin[1].weight], lr=0.01, momentum=0.9, weight_decay=1e-4)
    adamw = torch.optim.AdamW([{"params": [p for p in rest if p.ndim > 1], "weight_decay": 0.05},
                               {"params": [p for p in rest if p.ndim <= 1], "weight_decay": 0.0}], lr=1e-3)
    _train(model, optimizer, steps=3, seed=1)
    generator = torch.Generator().manual_seed(1)
    for _ in range(3):
        sgd.zero_grad(), adamw.zero_grad()
        twin(torch.randn(2, 3, 8, 8, generator=generator)).square().mean().backward()
        grad = twin[1].weight.grad
        grad.mul_(2.0 * math.sqrt(grad.numel()) / grad.norm())
        sgd.step(), adamw.step()
    for (name, param), twin_param in zip(model.named_parameters(), twin.parameters()):
        torch.testing.assert_close(param, twin_param, msg=name)


def test_mixed_optimizer_state_round_trips_and_continues_exactly():
    model = _adder_pair()
    optimizer = _mixed_optimizer(model)
    _train(model, optimizer, steps=2, seed=1)
    state = copy.deepcopy(optimizer.state_dict())  # a checkpoint's copy, not the live tensors
    assert {"momentum_buffer"} == set(state["state"][[i for g in state["param_groups"] if "adder_eta" in g
                                                      for i in g["params"]][0]])
    continued = _adder_pair()
    continued.load_state_dict(model.state_dict())
    resumed = _mixed_optimizer(continued)
    resumed.load_state_dict(state)
    _train(model, optimizer, steps=2, seed=2)
    _train(continued, resumed, steps=2, seed=2)
    for param, other in zip(model.parameters(), continued.parameters()):
        torch.testing.assert_close(param, other)


def test_adder_optimizer_options_are_checked():
    with pytest.raises(ValueError, match="'rmsprop'"):
        build_optimizer(_adder_pair(), name="adamw", lr=1e-3, weight_decay=0.0, decay_norm_and_bias=False,
                        momentum=0.9, nesterov=False, betas=(0.9, 0.999), eps=1e-8, adder_eta=0.2,
                        adder_optimizer="rmsprop")
    with pytest.raises(ValueError, match="adder_eta"):
        build_optimizer(_adder_pair(), name="adamw", lr=1e-3, weight_decay=0.0, decay_norm_and_bias=False,
                        momentum=0.9, nesterov=False, betas=(0.9, 0.999), eps=1e-8, adder_eta=None,
                        adder_optimizer="sgd")


def test_adder_resnets_keep_stem_and_classifier_multiplicative():
    model = vislab.create_model("adder_resnet20", num_classes=10)
    assert isinstance(model.backbone.stem.conv, nn.Conv2d)
    assert isinstance(model.head.fc, nn.Linear) and isinstance(model.head.norm, nn.BatchNorm1d)
    adders = [m for m in model.modules() if isinstance(m, AdderConv2d)]
    assert len(adders) == 9 * 2 + 2  # two per basic block, one per projection shortcut
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_operation_count_and_energy_of_a_two_layer_model_worked_by_hand():
    """A 3x3 conv (3 -> 4 channels) then a 3x3 adder layer (4 -> 5) on 8x8 with 'same' padding:
    conv 8*8*4 outputs x 27 = 6,912 multiply-adds; adder 8*8*5 x 36 = 11,520 accumulations, each
    a subtraction and an addition. Energy: 6,912 x (3.7 + 0.9) + 11,520 x 2 x 0.9 pJ."""
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, bias=False), AdderConv2d(4, 5, 3, padding=1))
    counts = operation_counts(model, (3, 8, 8))
    assert counts["conv"] == {"macs": 6912e-9, "multiplications": 6912e-9, "additions": 6912e-9}
    assert counts["adder"] == {"macs": 11520e-9, "multiplications": 0.0, "additions": 2 * 11520e-9}
    expected_mj = (6912 * (3.7 + 0.9) + 11520 * 2 * 0.9) * 1e-9
    assert math.isclose(energy_mj(counts), expected_mj, rel_tol=1e-9)
    assert math.isclose(energy_mj(counts, multiplication_pj=1.0, addition_pj=1.0), (6912 * 2 + 11520 * 2) * 1e-9)


def test_energy_count_prices_the_centring_worked_by_hand():
    """A centred 3x3 adder layer, 4 -> 6 channels in 2 groups, on 8x8 ('same' padding): 8*8*6
    outputs x 18 = 6,912 accumulations; the centring of 8*8 positions x 2 groups of 3 channels
    takes 3 additions and 3 subtractions per group (768) and one multiplication by 1/3 (128)."""
    counts = operation_counts(nn.Sequential(AdderConv2d(4, 6, 3, padding=1, groups=2, center=True)), (4, 8, 8))
    assert counts["adder"] == {"macs": 6912e-9, "multiplications": 0.0, "additions": 2 * 6912e-9}
    assert counts["adder centring"] == {"macs": 0.0, "multiplications": 128e-9, "additions": 768e-9}
    expected_mj = (2 * 6912 * 0.9 + 128 * 3.7 + 768 * 0.9) * 1e-9
    assert math.isclose(energy_mj(counts), expected_mj, rel_tol=1e-9)


def test_fcos_against_adder_fcos_energy_near_the_papers_ratio():
    """The paper (table 5): FCOS-R50 987.7 mJ, Adder FCOS 702.7 mJ (1.41x) at 800x1333."""
    energies = {name: energy_mj(operation_counts(on_meta(lambda n=name: vislab.create_model(n)), (3, 800, 1333)))
                for name in ("fcos_r50_fpn", "adder_fcos_r50_rpafpn")}
    assert abs(energies["fcos_r50_fpn"] - 987.7) / 987.7 < 0.01
    assert abs(energies["adder_fcos_r50_rpafpn"] - 702.7) / 702.7 < 0.01
    assert abs(energies["fcos_r50_fpn"] / energies["adder_fcos_r50_rpafpn"] - 987.7 / 702.7) < 0.02


@pytest.mark.slow
def test_compiled_kernels_equal_the_eager_forms(monkeypatch):
    """Above ``COMPILE_ELEMENTS`` the distances and input gradients run as torch.compile'd kernels."""
    from vislab.layers import adder as adder_module

    torch.manual_seed(3)
    x = torch.randn(300, 20, requires_grad=True)
    w = torch.randn(7, 20, requires_grad=True)
    grad = torch.randn(300, 7)
    results = []
    for threshold in (2**62, 0):  # eager, then compiled
        monkeypatch.setattr(adder_module, "COMPILE_ELEMENTS", threshold)
        for mode in ("hardtanh", "sign"):
            x.grad = w.grad = None
            out = adder(x, w, input_grad=mode)
            out.backward(grad)
            results.append((out.detach(), x.grad.clone(), w.grad.clone()))
    for eager, compiled in zip(results[:2], results[2:]):
        for a, b in zip(eager, compiled):
            torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-5)


def test_run_with_adder_weights_under_sgd_resumes_exactly_from_a_sharded_checkpoint(tmp_path):
    """The trainer with ``optim.adder_optimizer=sgd`` under AdamW: its optimizer state goes through
    torch.distributed.checkpoint and back, and the resumed run ends at the uninterrupted run's weights."""
    adder = ["model.conv=adder_sign", "optim.adder_optimizer=sgd", "optim.adder_lr=0.01", "optim.adder_eta=2.0",
             "train.checkpoint_format=sharded", "data.max_train_samples=48", "data.max_val_samples=32"]
    train(tiny_digits_config(tmp_path / "whole", *adder))
    train(tiny_digits_config(tmp_path / "resumed", *adder,
                             f"resume={tmp_path / 'whole' / 'checkpoints' / 'epoch_0001'}"))
    whole, resumed = (read_weights(tmp_path / run / "checkpoints" / "epoch_0002" / "sharded")[0]
                      for run in ("whole", "resumed"))
    assert max((whole[k] - resumed[k]).abs().max().item() for k in whole) < 1e-6
