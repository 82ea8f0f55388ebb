"""Unit tests for vislab/layers/norm.py: the norm factory and the custom norm layers."""
from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from vislab.layers import NORM_NAMES, FrozenBatchNorm2d, LayerNorm2d, get_norm


# ---------------------------------------------------------------------------------------------
# get_norm
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, expected", [
    ("BN", nn.BatchNorm2d),
    ("SyncBN", nn.SyncBatchNorm),
    ("FrozenBN", FrozenBatchNorm2d),
    ("GN", nn.GroupNorm),
    ("LN", LayerNorm2d),
    ("none", nn.Identity),
    (None, nn.Identity),
])
def test_get_norm_returns_module_type(name, expected):
    module = get_norm(name, 64)
    assert type(module) is expected


@pytest.mark.parametrize("name", ["BN", "SyncBN", "FrozenBN"])
def test_get_norm_batchnorm_family_has_channel_count(name):
    assert get_norm(name, 48).num_features == 48


def test_get_norm_ln_is_over_channels():
    ln = get_norm("LN", 24)
    assert tuple(ln.normalized_shape) == (24,)
    assert ln.weight.shape == (24,)


def test_gn_default_groups_is_32():
    gn = get_norm("GN", 64)
    assert gn.num_groups == 32
    assert gn.num_channels == 64


@pytest.mark.parametrize("groups", [1, 4, 16])
def test_gn_groups_configurable(groups):
    gn = get_norm("GN", 64, groups=groups)
    assert gn.num_groups == groups
    assert gn.num_channels == 64


def test_gn_channels_not_divisible_raises_naming_both_numbers():
    with pytest.raises(ValueError) as info:
        get_norm("GN", 48, groups=32)
    message = str(info.value)
    assert "48" in message
    assert "32" in message


def test_gn_default_groups_not_divisible_raises():
    # 16 channels cannot be split into the default 32 groups
    with pytest.raises(ValueError, match="16"):
        get_norm("GN", 16)


def test_unknown_norm_names_valid_options():
    with pytest.raises(ValueError) as info:
        get_norm("batchnorm", 8)
    message = str(info.value)
    assert "batchnorm" in message
    for name in NORM_NAMES:
        assert name in message


# ---------------------------------------------------------------------------------------------
# GroupNorm against the paper's reference code (Wu & He 2018, Figure 3)
# ---------------------------------------------------------------------------------------------

def _reference_group_norm(x, gamma, beta, G, eps):
    N, C, H, W = x.shape
    x = x.reshape(N, G, C // G, H, W)
    mean = x.mean(dim=(2, 3, 4), keepdim=True)
    var = ((x - mean) ** 2).mean(dim=(2, 3, 4), keepdim=True)  # biased variance
    x = (x - mean) / torch.sqrt(var + eps)
    x = x.reshape(N, C, H, W)
    return x * gamma.view(1, C, 1, 1) + beta.view(1, C, 1, 1)


@pytest.mark.parametrize("channels, groups", [(32, 8), (64, 32), (12, 3), (6, 1)])
def test_group_norm_matches_paper_reference(channels, groups):
    g = torch.Generator().manual_seed(0)
    gn = get_norm("GN", channels, groups=groups).double()
    with torch.no_grad():
        gn.weight.copy_(torch.randn(channels, generator=g, dtype=torch.float64))
        gn.bias.copy_(torch.randn(channels, generator=g, dtype=torch.float64))
    x = torch.randn(3, channels, 5, 7, generator=g, dtype=torch.float64) * 3 + 1.5
    expected = _reference_group_norm(x, gn.weight.detach(), gn.bias.detach(), groups, gn.eps)
    torch.testing.assert_close(gn(x), expected, rtol=1e-10, atol=1e-10)


def test_group_norm_is_independent_of_batch_size():
    # GN normalises each sample on its own: sample 0's output does not depend on the others.
    g = torch.Generator().manual_seed(1)
    gn = get_norm("GN", 16, groups=4)
    x = torch.randn(4, 16, 6, 6, generator=g)
    torch.testing.assert_close(gn(x)[:1], gn(x[:1]))


# ---------------------------------------------------------------------------------------------
# FrozenBatchNorm2d
# ---------------------------------------------------------------------------------------------

def _random_bn(channels: int, seed: int = 0) -> nn.BatchNorm2d:
    g = torch.Generator().manual_seed(seed)
    bn = nn.BatchNorm2d(channels)
    with torch.no_grad():
        bn.weight.copy_(torch.randn(channels, generator=g))
        bn.bias.copy_(torch.randn(channels, generator=g))
        bn.running_mean.copy_(torch.randn(channels, generator=g))
        bn.running_var.copy_(torch.rand(channels, generator=g) * 2 + 0.1)
        bn.num_batches_tracked.fill_(17)
    return bn.eval()


def test_frozen_bn_has_no_parameters_only_buffers():
    frozen = FrozenBatchNorm2d(8)
    assert list(frozen.parameters()) == []
    buffers = dict(frozen.named_buffers())
    assert set(buffers) == {"weight", "bias", "running_mean", "running_var"}


def test_frozen_bn_identity_at_init():
    frozen = FrozenBatchNorm2d(4)
    x = torch.randn(2, 4, 3, 3)
    torch.testing.assert_close(frozen(x), x / (1 + frozen.eps) ** 0.5)


def test_frozen_bn_matches_bn_eval_after_state_dict_load():
    bn = _random_bn(10)
    state = bn.state_dict()
    assert "num_batches_tracked" in state  # the key FrozenBN must accept
    frozen = FrozenBatchNorm2d(10)
    result = frozen.load_state_dict(state, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    x = torch.randn(4, 10, 5, 5, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(frozen(x), bn(x), rtol=1e-5, atol=1e-5)


def test_frozen_bn_state_dict_load_with_prefix_drops_counter():
    bn_model = nn.Sequential(nn.Conv2d(3, 6, 1), _random_bn(6))
    frozen_model = nn.Sequential(nn.Conv2d(3, 6, 1), FrozenBatchNorm2d(6))
    frozen_model.load_state_dict(bn_model.state_dict(), strict=True)
    torch.testing.assert_close(frozen_model[1].running_var, bn_model[1].running_var)


def test_frozen_bn_output_unchanged_in_train_mode():
    bn = _random_bn(6, seed=2)
    frozen = FrozenBatchNorm2d(6)
    frozen.load_state_dict(bn.state_dict())
    frozen.train()
    x = torch.randn(3, 6, 4, 4)
    before = frozen.running_mean.clone()
    with torch.no_grad():
        torch.testing.assert_close(frozen(x), bn(x), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(frozen.running_mean, before)


def test_frozen_bn_convert_sequential_matches_bn_eval():
    g = torch.Generator().manual_seed(4)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        _random_bn(8, seed=5),
        nn.ReLU(),
        nn.Sequential(nn.Conv2d(8, 4, 1), _random_bn(4, seed=6)),
    ).eval()
    x = torch.randn(2, 3, 6, 6, generator=g)
    with torch.no_grad():
        expected = model(x)
    converted = FrozenBatchNorm2d.convert(model)
    assert isinstance(converted[1], FrozenBatchNorm2d)
    assert isinstance(converted[3][1], FrozenBatchNorm2d)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in converted.modules())
    with torch.no_grad():
        torch.testing.assert_close(converted(x), expected, rtol=1e-5, atol=1e-5)


def test_frozen_bn_convert_bare_bn_returns_frozen_copy():
    bn = _random_bn(5, seed=7)
    bn.eps = 1e-3
    frozen = FrozenBatchNorm2d.convert(bn)
    assert isinstance(frozen, FrozenBatchNorm2d)
    assert frozen.eps == 1e-3
    x = torch.randn(2, 5, 3, 3)
    with torch.no_grad():
        torch.testing.assert_close(frozen(x), bn(x), rtol=1e-5, atol=1e-5)


def test_frozen_bn_convert_keeps_dtype_of_statistics():
    bn = _random_bn(4, seed=9).double()
    with torch.no_grad():
        bn.running_var.add_(1e-12)  # not representable in float32 relative to ~1
    frozen = FrozenBatchNorm2d.convert(bn)
    assert frozen.running_var.dtype == torch.float64
    assert torch.equal(frozen.running_var, bn.running_var)


# ---------------------------------------------------------------------------------------------
# LayerNorm2d
# ---------------------------------------------------------------------------------------------

def test_layer_norm_2d_matches_channel_layer_norm():
    g = torch.Generator().manual_seed(8)
    C = 7
    ln = LayerNorm2d(C, eps=1e-6)
    with torch.no_grad():
        ln.weight.copy_(torch.randn(C, generator=g))
        ln.bias.copy_(torch.randn(C, generator=g))
    x = torch.randn(2, C, 4, 5, generator=g) * 2 + 0.5
    expected = F.layer_norm(x.permute(0, 2, 3, 1), (C,), ln.weight, ln.bias, 1e-6).permute(0, 3, 1, 2)
    out = ln(x)
    assert out.shape == x.shape
    torch.testing.assert_close(out, expected)
    # and by hand: each pixel's channel vector normalised (biased variance)
    mean = x.mean(dim=1, keepdim=True)
    var = x.var(dim=1, unbiased=False, keepdim=True)
    by_hand = (x - mean) / torch.sqrt(var + 1e-6) * ln.weight.view(1, C, 1, 1) + ln.bias.view(1, C, 1, 1)
    torch.testing.assert_close(out, by_hand, rtol=1e-5, atol=1e-5)


def test_get_norm_ln_eps():
    assert get_norm("LN", 4).eps == 1e-6
