"""Activation checkpointing and torch.compile per block (train.activation_checkpointing, train.compile)."""
from __future__ import annotations

import copy
import warnings

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

import vislab
from helpers import tiny_digits_config
from vislab.engine.block_wrapping import wrap_blocks
from vislab.engine.run import train
from vislab.models.blocks import find_blocks

TINY_MODELS = {  # name: (create_model arguments, input shape); stochastic depth where the model has it
    "vit": (dict(name="vit_s16", img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2,
                 drop_path_rate=0.2), (2, 3, 32, 32)),
    "mvitv2": (dict(name="mvitv2_tiny", depths=(1, 2, 1, 1), embed_dim=16, drop_path_rate=0.2), (2, 3, 64, 64)),
    "convnext": (dict(name="convnext_tiny", depths=(1, 1, 1, 1), dims=(8, 16, 32, 64), drop_path_rate=0.2),
                 (2, 3, 32, 32)),
    "resnet_bn": (dict(name="resnet18", width=0.25, norm="BN"), (4, 3, 32, 32)),
    "i3d_nonlocal_bn": (dict(name="i3d_r50_nl", depths=(1, 2, 1, 1), width=0.125, dropout=0.0,
                             nonlocal_locations=((), (1,), (0,), ())),
                        (2, 3, 4, 32, 32)),
    "slowfast_bn": (dict(name="slowfast_small", dropout=0.0), (2, 3, 8, 32, 32)),
    "mvit_video": (dict(name="mvitv2_s_16x4", depths=(1, 1, 2, 1), embed_dim=16, num_frames=4, img_size=64,
                        drop_path_rate=0.2), (2, 3, 4, 64, 64)),
}


def build(name: str) -> tuple[nn.Module, torch.Tensor]:
    kwargs, shape = TINY_MODELS[name]
    torch.manual_seed(0)
    model = vislab.create_model(kwargs["name"], num_classes=5, **{k: v for k, v in kwargs.items() if k != "name"})
    with torch.no_grad():  # no zero-initialised residual branches or norms: every gradient counts
        for tensor in model.parameters():
            tensor.add_(0.05 * torch.randn_like(tensor))
    return model.train(), torch.randn(shape, generator=torch.Generator().manual_seed(1))


def training_step(model: nn.Module, images: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    torch.manual_seed(2)  # the same stochastic-depth masks in both runs
    loss = model(images).logsumexp(dim=1).mean()
    loss.backward()
    return loss.detach(), {name: p.grad for name, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("name", sorted(TINY_MODELS))
def test_checkpointing_keeps_loss_gradients_statistics_and_names(name):
    plain, images = build(name)
    checkpointed = copy.deepcopy(plain)
    blocks = wrap_blocks(checkpointed, activation_checkpointing=True, compile_blocks=False)
    assert blocks and all(type(b).__name__ in {"TransformerBlock", "MultiScaleBlock", "ConvNeXtBlock", "BasicBlock",
                                               "Bottleneck3d"} for b in blocks.values())
    expected_loss, expected_grads = training_step(plain, images)
    loss, grads = training_step(checkpointed, images)
    torch.testing.assert_close(loss, expected_loss, rtol=0, atol=1e-6)
    assert grads.keys() == expected_grads.keys()
    for key, grad in grads.items():
        torch.testing.assert_close(grad, expected_grads[key], rtol=0, atol=1e-6, msg=key)
    # BatchNorm running statistics moved once, as without checkpointing (the recomputation's
    # update is undone), and the state dict keeps its names
    expected_state = plain.state_dict()
    assert list(checkpointed.state_dict()) == list(expected_state)
    for key, value in checkpointed.state_dict().items():
        torch.testing.assert_close(value, expected_state[key], rtol=0, atol=1e-6, msg=key)
    if name.endswith("_bn"):
        assert any(key.endswith("num_batches_tracked") and value.item() == 1 for key, value in expected_state.items())


def test_state_dicts_load_either_way():
    plain, _ = build("resnet_bn")
    wrapped = copy.deepcopy(plain)
    wrap_blocks(wrapped, activation_checkpointing=True, compile_blocks=True)
    assert [n for n, _ in wrapped.named_parameters()] == [n for n, _ in plain.named_parameters()]
    fresh_plain, _ = build("resnet_bn")
    fresh_plain.load_state_dict(wrapped.state_dict(), strict=True)
    wrapped.load_state_dict(plain.state_dict(), strict=True)


def test_blocks_are_found_in_detectors_and_ssl_models_outermost_only():
    detector = vislab.create_model("mask_rcnn_vitdet_b", num_classes=3, embed_dim=32, depth=4, num_heads=2,
                                   img_size=64, window_size=4, residual_blocks=(1,), neck_channels=16,
                                   head_conv_dim=16, head_fc_dim=32)
    assert list(find_blocks(detector)) == [f"backbone.blocks.{i}" for i in range(4)]  # not blocks.1.residual
    mae = vislab.create_model("mae_vit_b16", img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2,
                              decoder_dim=16, decoder_depth=1, decoder_heads=2)
    assert len(find_blocks(mae)) == 3  # encoder and decoder


def test_a_model_without_blocks_is_an_error():
    with pytest.raises(ValueError, match="none of the known blocks"):
        wrap_blocks(nn.Sequential(nn.Linear(2, 2)), activation_checkpointing=True, compile_blocks=False)


def test_trainer_runs_with_checkpointing_to_the_same_weights(tmp_path):
    steps = ["train.steps=2", "model.norm=BN", "data.max_train_samples=32", "data.max_val_samples=16"]
    train(tiny_digits_config(tmp_path / "plain", *steps))
    summary = train(tiny_digits_config(tmp_path / "checkpointed", *steps, "train.activation_checkpointing=true"))
    assert summary["steps"] == 2
    plain = load_file(str(tmp_path / "plain" / "checkpoints" / "epoch_0001" / "model.safetensors"))
    checkpointed = load_file(str(tmp_path / "checkpointed" / "checkpoints" / "epoch_0001" / "model.safetensors"))
    assert checkpointed.keys() == plain.keys()
    for key, value in checkpointed.items():
        torch.testing.assert_close(value, plain[key], rtol=0, atol=1e-6, msg=key)


def test_compiled_blocks_match_eager():
    """Inductor compiles on this CPU (gcc); one block type, forward only, to stay quick."""
    eager, images = build("vit")
    compiled = copy.deepcopy(eager)
    wrap_blocks(compiled, activation_checkpointing=False, compile_blocks=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no fallback
        with torch.no_grad():
            torch.testing.assert_close(compiled.eval()(images), eager.eval()(images), rtol=1e-4, atol=1e-5)


def test_a_block_that_fails_to_compile_falls_back_to_eager_with_one_warning(monkeypatch):
    def failing_compile(function, **_):
        def compiled(*args, **kwargs):
            raise RuntimeError("InductorError: CppCompileError: C++ compile error\nthe compiler's output")
        return compiled

    monkeypatch.setattr(torch, "compile", failing_compile)
    eager, images = build("resnet_bn")
    fallback = copy.deepcopy(eager)
    wrap_blocks(fallback, activation_checkpointing=True, compile_blocks=True)
    expected = (r"failed on block backbone\.res2\.0 \(RuntimeError: InductorError: CppCompileError: "
                r"C\+\+ compile error\); every block runs eagerly")
    with pytest.warns(RuntimeWarning, match=expected) as caught:
        loss, grads = training_step(fallback, images)
    assert len([w for w in caught if "train.compile" in str(w.message)]) == 1
    expected_loss, expected_grads = training_step(eager, images)
    torch.testing.assert_close(loss, expected_loss, rtol=0, atol=1e-6)
    for key, grad in grads.items():
        torch.testing.assert_close(grad, expected_grads[key], rtol=0, atol=1e-6, msg=key)


def test_an_error_of_the_block_itself_is_still_raised_after_the_fallback():
    model, _ = build("resnet_bn")
    block = wrap_blocks(model, activation_checkpointing=False, compile_blocks=True)["backbone.res2.0"]
    with pytest.warns(RuntimeWarning, match="train.compile"), pytest.raises(RuntimeError, match="channels"):
        block(torch.randn(1, 5, 8, 8))  # the block takes 16 channels
