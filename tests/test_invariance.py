"""The invariance feature transform: Newton-Schulz against an eigendecomposition, whitened patches,
the folded evaluation-mode layer against the explicit computation, scale invariance, models."""
import pytest
import torch
from torch.nn import functional as F

from vislab import create_model
from vislab.layers.invariance import InvariantConv2d, InvariantLinear, invariant_linears, newton_schulz_isqrt


def _spd(n: int, *, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(n, 3 * n, generator=g, dtype=torch.float64)
    return a @ a.t() / (3 * n) + 0.05 * torch.eye(n, dtype=torch.float64)


def _eigen_isqrt(matrix: torch.Tensor) -> torch.Tensor:
    values, vectors = torch.linalg.eigh(matrix)
    return vectors @ torch.diag(values.rsqrt()) @ vectors.t()


def _correlated_input(n: int, c: int, size: int, *, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    mixing = torch.randn(c, c, generator=g)
    x = torch.randn(n, c, size, size, generator=g)
    return torch.einsum("oc,nchw->nohw", mixing, x) + torch.randn(1, c, 1, 1, generator=g)


def test_newton_schulz_matches_the_eigendecomposition():
    matrix = _spd(24)
    reference = _eigen_isqrt(matrix)
    assert torch.allclose(newton_schulz_isqrt(matrix, iterations=25), reference, atol=1e-10)
    # few iterations are an approximation, and more iterations improve it
    errors = [(newton_schulz_isqrt(matrix, iterations=k) - reference).abs().max() for k in (2, 4, 8)]
    assert errors[0] > errors[1] > errors[2]


def test_training_mode_whitens_the_patch_covariance():
    conv = InvariantConv2d(8, 4, 3, padding=1, block=8, sampling_stride=1, iterations=30, eps=1e-8).double()
    x = _correlated_input(6, 8, 10).double()
    conv.train()
    samples = conv._patch_samples(x)
    mean, whitening = conv.whiten.statistics(samples)
    whitened = (samples - mean) @ whitening
    covariance = whitened.t() @ whitened / whitened.shape[0]
    assert covariance.shape == (72, 72)
    assert torch.allclose(covariance, torch.eye(72, dtype=torch.float64), atol=1e-4)
    # before whitening the patches are far from white
    raw = (samples - mean).t() @ (samples - mean) / samples.shape[0]
    assert (raw - torch.eye(72, dtype=torch.float64)).abs().max() > 0.5


@pytest.mark.parametrize("stride,block", [(1, 4), (2, 8)])
def test_folded_eval_conv_equals_the_explicit_transform(stride, block):
    torch.manual_seed(0)
    conv = InvariantConv2d(8, 5, 3, stride=stride, padding=1, block=block, sampling_stride=2).double()
    x = _correlated_input(3, 8, 9).double()
    conv.train()
    for _ in range(3):  # running estimates away from their initial values
        conv(x)
    conv.eval()
    y = conv(x)
    # explicit: every patch divided by its RMS, centred, whitened per channel block, then W and b
    patches = F.unfold(x, 3, padding=1, stride=stride)  # (N, C k k, L)
    patches = patches / (patches.pow(2).mean(1, keepdim=True) + conv.rms_eps).sqrt()
    n, _, length = patches.shape
    blocks = patches.transpose(1, 2).reshape(n, length, -1, conv.num_features)
    whitened = (blocks - conv.whiten.running_mean) @ conv.whiten.running_whitening
    explicit = whitened.reshape(n, length, -1) @ conv.weight.reshape(5, -1).t() + conv.bias
    size = (9 + 2 - 3) // stride + 1
    assert torch.allclose(y, explicit.transpose(1, 2).reshape(n, 5, size, size), atol=1e-10)


def test_output_is_invariant_to_the_scale_of_the_input():
    conv = InvariantConv2d(4, 3, 3, padding=1, rms_eps=1e-12).double().eval()
    x = _correlated_input(2, 4, 8).double()
    assert torch.allclose(conv(x), conv(7.5 * x), atol=1e-8)
    linear = InvariantLinear(16, 3, block=8, rms_eps=1e-12).double().eval()
    tokens = torch.randn(2, 5, 16, dtype=torch.float64)
    assert torch.allclose(linear(tokens), linear(0.01 * tokens), atol=1e-8)


def test_linear_training_statistics_and_eval_fold():
    torch.manual_seed(0)
    linear = InvariantLinear(12, 4, block=6, iterations=30, eps=1e-9).double()
    tokens = torch.randn(64, 12, dtype=torch.float64) @ torch.randn(12, 12, dtype=torch.float64)
    linear.train()
    y_train = linear(tokens)
    linear.whiten.momentum = 1.0  # running estimates = this batch's
    linear(tokens)
    linear.eval()
    assert torch.allclose(linear(tokens), y_train, atol=1e-6)
    normalised = tokens / (tokens.pow(2).mean(-1, keepdim=True) + linear.rms_eps).sqrt()
    blocks = normalised.reshape(-1, 6)
    whitened = (blocks - linear.whiten.running_mean) @ linear.whiten.running_whitening
    covariance = whitened.t() @ whitened / whitened.shape[0]
    assert torch.allclose(covariance, torch.eye(6, dtype=torch.float64), atol=1e-5)


def test_gradients_flow_through_the_batch_statistics():
    conv = InvariantConv2d(4, 2, 3, padding=1, block=4, sampling_stride=1).double()
    x = _correlated_input(2, 4, 6).double().requires_grad_()
    conv(x).pow(2).sum().backward()
    assert x.grad.abs().sum() > 0 and conv.weight.grad.abs().sum() > 0


def test_resnet_and_vit_take_the_transform():
    resnet = create_model("resnet20", num_classes=10, conv="ift", norm="none")
    convs = [m for m in resnet.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(isinstance(m, InvariantConv2d) for m in convs)
    assert resnet(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    vit = create_model("vit_s16", num_classes=10, img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=2,
                       linear="ift")
    assert any(isinstance(m, InvariantLinear) for m in vit.modules())
    assert vit(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    with pytest.raises(ValueError, match="conv=ift"):
        create_model("resnext50_32x4d", num_classes=10, conv="ift")


def test_invariant_linears_keep_the_weights():
    block = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.GELU(), torch.nn.Linear(8, 4))
    weights = [block[0].weight.clone(), block[2].weight.clone()]
    invariant_linears(block, block=4)
    assert isinstance(block[0], InvariantLinear) and isinstance(block[2], InvariantLinear)
    assert torch.equal(block[0].weight, weights[0]) and torch.equal(block[2].weight, weights[1])


def test_evaluation_folds_once_until_the_weights_or_statistics_change(monkeypatch):
    """Without gradients the folded weights are reused; an optimizer step (an in-place update),
    new running statistics or a loaded state dict fold again, so outputs follow the weights."""
    import vislab.layers.invariance as invariance

    folds = []
    fold = invariance.fold_whitening
    monkeypatch.setattr(invariance, "fold_whitening", lambda *a: folds.append(1) or fold(*a))
    torch.manual_seed(0)
    conv, linear = InvariantConv2d(8, 4, 3, padding=1).eval(), InvariantLinear(8, 4, block=4).eval()
    x = _correlated_input(2, 8, 6)
    tokens = x.flatten(2).transpose(1, 2)
    with torch.no_grad():
        first = conv(x), linear(tokens)
        assert len(folds) == 2 and torch.equal(conv(x), first[0]) and torch.equal(linear(tokens), first[1])
        assert len(folds) == 2
        conv.weight.mul_(2.0)  # as an optimizer step does
        linear.load_state_dict({**linear.state_dict(), "bias": linear.bias + 1.0})
        assert torch.allclose(conv(x) - conv.bias.view(1, -1, 1, 1),
                              2 * (first[0] - conv.bias.view(1, -1, 1, 1)), atol=1e-5)
        assert torch.allclose(linear(tokens), first[1] + 1.0, atol=1e-5)
        assert len(folds) == 4
    conv(x).sum().backward()  # with gradients every forward folds, so the weights get theirs
    assert conv.weight.grad is not None and len(folds) == 5


def test_flops_reports_the_transforms_training_overhead(capsys):
    from vislab.cli import main
    from vislab.models.info import invariance_overhead

    assert invariance_overhead("resnet20", input_size=(3, 32, 32), norm="none") is None
    small, large = (invariance_overhead("resnet20", input_size=(3, 32, 32), batch_size=b, conv="ift", norm="none")
                    for b in (8, 128))
    assert small["plain_gmacs"] == pytest.approx(large["plain_gmacs"])
    # the batch statistics cost the same per batch, so less per image in a larger batch
    assert small["overhead"] > large["overhead"] > 0
    assert main(["flops", "resnet20", "--input", "3x32x32", "conv=ift", "norm=none"]) == 0
    assert "invariance transform:" in capsys.readouterr().out
    # a detector's trunk asks for it through backbone_options
    nested = invariance_overhead("fcos_r18_fpn_gn_small", input_size=(3, 64, 64), batch_size=2,
                                 backbone_options={"width": 0.5, "conv": "ift"})
    assert nested is not None and nested["overhead"] > 0


def test_training_under_bf16_autocast_keeps_float32_statistics():
    conv = InvariantConv2d(8, 4, 3, padding=1)
    linear = InvariantLinear(8, 4, block=4)
    x = _correlated_input(2, 8, 6)
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        y = conv(x)
        z = linear(x.flatten(2).transpose(1, 2))
    assert y.dtype == torch.bfloat16 and z.shape == (2, 36, 4)
    assert conv.whiten.running_whitening.dtype == torch.float32
    assert torch.isfinite(conv.whiten.running_whitening).all() and torch.isfinite(y).all()


def test_channel_blocks_are_the_largest_divisor_up_to_block():
    assert InvariantConv2d(3, 4, 3).block == 3  # the RGB stem is whitened across colours
    assert InvariantConv2d(24, 4, 3, block=16).block == 12
    assert InvariantConv2d(64, 4, 1, block=16).block == 16
