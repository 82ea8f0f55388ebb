"""timm's model conventions, checked against torchvision's ResNet with the same weights:
``create_model(name, num_classes=0)`` returns pooled features, ``features_only=True`` the trunk's
feature maps as a list, with ``feature_info`` beside them."""
from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

import vislab
from vislab.convert import convert_state_dict
from vislab.weights import load_state_dict


def _torchvision_resnet18_and_converted() -> tuple[nn.Module, dict[str, torch.Tensor]]:
    torch.manual_seed(0)
    reference = torchvision.models.resnet18(num_classes=10).eval()
    converted, _ = convert_state_dict(source="torchvision", model_name="resnet18", state_dict=reference.state_dict())
    return reference, converted


def _without_head(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {key: value for key, value in state.items() if not key.startswith("head.")}


def test_num_classes_zero_returns_the_pooled_features():
    reference, converted = _torchvision_resnet18_and_converted()
    model = vislab.create_model("resnet18", num_classes=0).eval()
    assert not any(key.startswith("head.") for key in model.state_dict())
    assert load_state_dict(model, _without_head(converted), strict=True).ok
    reference.fc = nn.Identity()
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected, features = reference(x), model(x)
    assert features.shape == (2, 512)
    assert (features - expected).abs().max().item() <= 1e-5


def test_features_only_returns_the_chosen_feature_maps_with_their_info():
    reference, converted = _torchvision_resnet18_and_converted()
    model = vislab.create_model("resnet18", features_only=True, out_indices=(1, 3)).eval()
    assert load_state_dict(model, _without_head(converted), strict=True).ok  # the trunk's keys, as the classifier's
    assert [(info["num_chs"], info["reduction"]) for info in model.feature_info] == [(128, 8), (512, 32)]

    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        maps = model(x)
        stem = reference.maxpool(reference.relu(reference.bn1(reference.conv1(x))))
        layer2 = reference.layer2(reference.layer1(stem))
        layer4 = reference.layer4(reference.layer3(layer2))
    assert isinstance(maps, list) and len(maps) == 2
    assert (maps[0] - layer2).abs().max().item() <= 1e-5
    assert (maps[1] - layer4).abs().max().item() <= 1e-5


def test_features_only_keeps_every_map_by_default_and_names_bad_indices():
    model = vislab.create_model("resnet18", features_only=True)
    assert [info["reduction"] for info in model.feature_info] == [4, 8, 16, 32]
    with pytest.raises(ValueError, match=r"out_indices \[7\]"):
        vislab.create_model("resnet18", features_only=True, out_indices=(0, 7))
    with pytest.raises(ValueError, match="needs features_only=True"):
        vislab.create_model("resnet18", out_indices=(0,))
