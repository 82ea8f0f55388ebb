"""Unit tests for vislab/weights.py and the torchvision weight converter in vislab/convert."""
from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

import vislab
from vislab.convert import convert_file, convert_state_dict
from vislab.weights import LoadReport, WeightsError, load_state_dict, read_weights


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        return self.fc(self.bn(self.conv(x)).mean(dim=(2, 3)))


def _randomized(module: nn.Module, seed: int) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for t in module.state_dict().values():
            if t.is_floating_point():
                t.copy_(torch.rand(t.shape, generator=g) + 0.1)
    return module


# ---------------------------------------------------------------------------------------------
# save / load
# ---------------------------------------------------------------------------------------------

def test_save_load_round_trip_with_metadata(tmp_path):
    src = _randomized(Tiny(), 0)
    path = tmp_path / "w.safetensors"
    meta = {"model": "tiny", "num_classes": 2, "epoch": 3, "top1": 0.5, "tags": ["a", "b"]}
    vislab.save_weights(src.state_dict(), path, metadata=meta)
    tensors, metadata = read_weights(path)
    assert metadata == meta
    assert set(tensors) == set(src.state_dict())
    dst = Tiny()
    report = vislab.load_weights(dst, path)
    assert isinstance(report, LoadReport) and report.ok
    for key, value in src.state_dict().items():
        assert torch.equal(dst.state_dict()[key], value), key
    x = torch.randn(2, 3, 5, 5)
    src.eval(), dst.eval()
    torch.testing.assert_close(dst(x), src(x), rtol=0, atol=0)
    assert [p.name for p in tmp_path.iterdir()] == ["w.safetensors"]  # no temp file left


def test_save_weights_non_contiguous_tensor(tmp_path):
    t = torch.arange(12.0).reshape(3, 4).t()
    assert not t.is_contiguous()
    vislab.save_weights({"t": t}, tmp_path / "t.safetensors")
    tensors, _ = read_weights(tmp_path / "t.safetensors")
    assert torch.equal(tensors["t"], t)


def _bad_state_dict():
    state = _randomized(Tiny(), 1).state_dict()
    del state["conv.bias"]  # missing
    state["extra.weight"] = torch.zeros(3)  # unexpected
    state["fc.weight"] = torch.zeros(5, 4)  # mis-shaped (model has 2 x 4)
    return state


def test_strict_load_names_every_bad_key(tmp_path):
    path = tmp_path / "bad.safetensors"
    vislab.save_weights(_bad_state_dict(), path)
    with pytest.raises(WeightsError) as info:
        vislab.load_weights(Tiny(), path)
    message = str(info.value)
    for key in ("conv.bias", "extra.weight", "fc.weight"):
        assert key in message
    assert "missing" in message and "unexpected" in message


def test_strict_load_leaves_model_untouched():
    model = Tiny()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(WeightsError):
        load_state_dict(model, _bad_state_dict())
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_non_strict_load_reports_and_loads_the_rest():
    model = Tiny()
    state = _bad_state_dict()
    conv_bias_before = model.conv.bias.detach().clone()
    fc_weight_before = model.fc.weight.detach().clone()
    report = load_state_dict(model, state, strict=False)
    assert not report.ok
    assert report.missing == ["conv.bias"]
    assert report.unexpected == ["extra.weight"]
    assert len(report.mismatched) == 1 and report.mismatched[0].startswith("fc.weight")
    assert "(5, 4)" in report.mismatched[0] and "(2, 4)" in report.mismatched[0]
    # the matching keys loaded; the others kept their values
    for key in ("conv.weight", "bn.weight", "bn.bias", "bn.running_mean", "bn.running_var", "fc.bias"):
        assert torch.equal(model.state_dict()[key], state[key]), key
    assert torch.equal(model.conv.bias, conv_bias_before)
    assert torch.equal(model.fc.weight, fc_weight_before)


def test_missing_num_batches_tracked_is_not_reported():
    model = Tiny()
    state = _randomized(Tiny(), 2).state_dict()
    del state["bn.num_batches_tracked"]
    assert load_state_dict(model, state).ok


def test_bn_weights_load_into_frozen_bn_model(tmp_path):
    bn_model = vislab.create_model("resnet18", num_classes=10, width=0.25)
    _randomize_bn(bn_model, seed=5)
    path = tmp_path / "bn.safetensors"
    vislab.save_weights(bn_model.state_dict(), path)
    frozen = vislab.create_model("resnet18", num_classes=10, width=0.25, norm="FrozenBN")
    frozen.load_state_dict(bn_model.state_dict(), strict=True)  # plain torch accepts this
    assert vislab.load_weights(frozen, path).ok


def test_truncated_safetensors_raises_naming_file(tmp_path):
    path = tmp_path / "cut.safetensors"
    vislab.save_weights(_randomized(Tiny(), 3).state_dict(), path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightsError) as info:
        vislab.load_weights(Tiny(), path)
    assert str(path) in str(info.value)


def test_missing_file_raises(tmp_path):
    with pytest.raises(WeightsError, match="nothere.safetensors"):
        vislab.load_weights(Tiny(), tmp_path / "nothere.safetensors")


class Payload:
    """Stands for arbitrary code a pickle could run on load."""

    def __init__(self):
        self.value = 42


def test_pth_with_pickled_object_is_refused(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"conv.weight": torch.zeros(4, 3, 3, 3), "payload": Payload()}, path)
    with pytest.raises(WeightsError) as info:
        vislab.load_weights(Tiny(), path)
    assert str(path) in str(info.value)


class RunsCommand:
    """Unpickling this calls os.system: what a malicious checkpoint does."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os
        return os.system, (f"touch {self.marker}",)


def test_pkl_naming_a_callable_is_refused_and_nothing_runs(tmp_path):
    import pickle

    import numpy as np

    marker, path = tmp_path / "ran", tmp_path / "model_final.pkl"
    with open(path, "wb") as file:
        pickle.dump({"model": {"fc.weight": np.zeros((2, 2), dtype=np.float32), "x": RunsCommand(marker)}}, file)
    with pytest.raises(WeightsError, match=r"names (posix|os)\.system.*refusing"):
        read_weights(path)
    assert not marker.exists()


def test_pkl_of_numpy_arrays_reads_as_tensors(tmp_path):
    import pickle

    import numpy as np

    src = _randomized(Tiny(), 5)
    path = tmp_path / "model_final.pkl"
    with open(path, "wb") as file:
        pickle.dump({"model": {k: v.numpy() for k, v in src.state_dict().items()}, "__author__": "x"}, file)
    dst = Tiny()
    assert vislab.load_weights(dst, path).ok
    assert torch.equal(dst.fc.weight, src.fc.weight)


def test_pth_plain_state_dict_and_wrapped_state_dict_load(tmp_path):
    src = _randomized(Tiny(), 4)
    for i, obj in enumerate([src.state_dict(), {"model": src.state_dict(), "epoch": 3},
                             {"state_dict": src.state_dict()}]):
        path = tmp_path / f"w{i}.pth"
        torch.save(obj, path)
        dst = Tiny()
        assert vislab.load_weights(dst, path).ok
        assert torch.equal(dst.fc.weight, src.fc.weight)


def test_pth_without_tensors_is_refused(tmp_path):
    path = tmp_path / "notweights.pth"
    torch.save({"a": 1, "b": "text"}, path)
    with pytest.raises(WeightsError, match="state dict"):
        vislab.load_weights(Tiny(), path)


# ---------------------------------------------------------------------------------------------
# torchvision conversion
# ---------------------------------------------------------------------------------------------

def _randomize_bn(model: nn.Module, seed: int) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(n, generator=g) * 0.5 + 0.75)
                m.weight.copy_(torch.rand(n, generator=g) * 0.5 + 0.5)
                m.bias.copy_(torch.randn(n, generator=g) * 0.1)
    return model


@pytest.mark.parametrize("name, builder", [
    ("resnet50", lambda: torchvision.models.resnet50(num_classes=1000)),
    ("resnext50_32x4d", lambda: torchvision.models.resnext50_32x4d()),
])
def test_torchvision_conversion_is_equivalent(tmp_path, name, builder):
    torch.manual_seed(0)
    tv = _randomize_bn(builder(), seed=1).eval()
    src = tmp_path / f"{name}_tv.pth"
    dst = tmp_path / f"{name}.safetensors"
    torch.save(tv.state_dict(), src)
    convert_file(source="torchvision", model_name=name, src=src, dst=dst)

    model = vislab.create_model(name)
    assert vislab.load_weights(model, dst).ok
    model.eval()
    _, metadata = read_weights(dst)
    assert metadata["model"] == name
    assert metadata["num_classes"] == 1000

    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = tv(x)
        actual = model(x)
    assert actual.shape == (2, 1000)
    assert expected.std() > 1e-3  # the comparison is not between two near-constant outputs
    assert (actual - expected).abs().max().item() <= 1e-5


def test_converted_head_keeps_source_class_count(tmp_path):
    tv = torchvision.models.resnet18(num_classes=7)
    state = tv.state_dict()
    converted, model = convert_state_dict(source="torchvision", model_name="resnet18", state_dict=state)
    assert model.head.fc.out_features == 7
    assert "num_batches_tracked" not in " ".join(converted)
    assert "head.fc.weight" in converted and "backbone.res5.1.norm2.weight" in converted


def test_resnet18_weights_converted_as_resnet50_list_bad_keys(tmp_path):
    src = tmp_path / "r18.pth"
    torch.save(torchvision.models.resnet18().state_dict(), src)
    dst = tmp_path / "out.safetensors"
    with pytest.raises(WeightsError) as info:
        convert_file(source="torchvision", model_name="resnet50", src=src, dst=dst)
    message = str(info.value)
    assert "resnet50" in message
    assert "missing" in message and "mis-shaped" in message
    assert "backbone.res2.0.conv3.weight" in message  # a bottleneck key resnet18 lacks
    assert "backbone.res2.0.conv1.weight" in message  # present in both, 1x1 vs 3x3 kernel
    # the counts agree with comparing the two torchvision layouts directly
    r18 = torchvision.models.resnet18().state_dict()
    r50 = torchvision.models.resnet50().state_dict()
    missing = [k for k in r50 if k not in r18 and not k.endswith("num_batches_tracked")]
    misshaped = [k for k in r50 if k in r18 and r50[k].shape != r18[k].shape]
    assert f"{len(missing)} missing" in message
    assert f"{len(misshaped)} mis-shaped" in message
    assert not dst.exists()


def test_unknown_conversion_source_raises():
    with pytest.raises(WeightsError, match="timm"):
        convert_state_dict(source="timm", model_name="resnet50", state_dict={})


def test_output_format_follows_the_extension(tmp_path):
    state = _randomized(Tiny(), 6).state_dict()
    vislab.save_weights(state, tmp_path / "w.pth", metadata={"model": "x"})
    plain = torch.load(tmp_path / "w.pth", weights_only=True)  # a plain tensor dict
    assert set(plain) == set(state) and torch.equal(plain["fc.weight"], state["fc.weight"])
    vislab.save_weights(state, tmp_path / "w.safetensors", metadata={"model": "x"})
    assert read_weights(tmp_path / "w.safetensors")[1] == {"model": "x"}
    with pytest.raises(WeightsError, match=r"\.safetensors.*\.pth"):
        vislab.save_weights(state, tmp_path / "w.bin")


@pytest.mark.parametrize("written, named", [("w.safetensors", "w.pth"), ("w.pth", "w.safetensors")])
def test_reading_sniffs_the_content_and_says_what_the_file_is(tmp_path, written, named):
    state = _randomized(Tiny(), 7).state_dict()
    vislab.save_weights(state, tmp_path / written)
    (tmp_path / written).rename(tmp_path / named)
    what = "safetensors" if written.endswith("safetensors") else "PyTorch"
    with pytest.warns(UserWarning, match=f"{named} is a {what}"):
        loaded, _ = read_weights(tmp_path / named)
    assert torch.equal(loaded["fc.weight"], state["fc.weight"])
    (tmp_path / "junk.pth").write_text("not weights")
    with pytest.raises(WeightsError, match="junk.pth is not a weights file"):
        read_weights(tmp_path / "junk.pth")


def test_convert_refuses_its_input_and_existing_files_unless_forced(tmp_path):
    src = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18().state_dict(), src)
    with pytest.raises(WeightsError, match="onto itself"):
        convert_file(source="torchvision", model_name="resnet18", src=src, dst=src, force=True)
    dst = tmp_path / "out.safetensors"
    dst.write_text("precious")
    with pytest.raises(WeightsError, match="exists; pass --force"):
        convert_file(source="torchvision", model_name="resnet18", src=src, dst=dst)
    assert dst.read_text() == "precious"
    convert_file(source="torchvision", model_name="resnet18", src=src, dst=dst, force=True)
    assert read_weights(dst)[1]["model"] == "resnet18"
