"""Unit tests for the 3-D CNN video models: the non-local block, ResNet-3D (C2D/I3D/Slow),
SlowFast, X3D, their registry figures, pytorchvideo equivalence and I3D inflation."""
from __future__ import annotations

import functools

import pytest
import torch
import torchvision
from pytorchvideo.models import hub
from pytorchvideo.models.x3d import create_x3d
from torch import nn

import vislab
from vislab.convert import convert_state_dict
from vislab.convert.inflate import inflate_2d_state_dict
from vislab.convert.pytorchvideo import pytorchvideo_resnet3d, pytorchvideo_slowfast
from vislab.convert.torchvision import torchvision_resnet
from vislab.layers import FrozenBatchNorm2d, get_norm
from vislab.layers.nonlocal_block import NonLocalBlock
from vislab.models.backbones.resnet import ResNet
from vislab.models.backbones.slowfast import slow_pathway_frames
from vislab.models.backbones.x3d import X3DBlock
from vislab.models.classifier import ImageClassifier
from vislab.models.complexity import count_params, on_meta
from vislab.models.registry import get_entry, list_models
from vislab.models.zoo.video_cnn import resnet3d_classifier
from vislab.weights import load_state_dict

# ../shared/reference/model-figures.md, "Video models": params (exact int, or the table's
# rounded millions as a float) and GMACs per view (None where the table gives none).
REFERENCE = {
    "x3d_xs": (3.79, 0.60),
    "x3d_s": (3.79, 1.96),
    "x3d_m": (3_794_274, 4.73),
    "x3d_l": (6.15, 18.37),
    "slowfast_r50_4x16": (34.48, 36.7),
    "slowfast_r50_8x8": (34_566_488, 65.7),
    "i3d_r50": (28_043_472, 37.5),
    "slow_r50_8x8": (32_454_096, None),
}
# models the table does not list (or lists without figures): pytorchvideo's own counts of the same
# architectures (c2d_r50, slow_r50 at 4 frames, slowfast_r101; X3D-XS/S share X3D-M's network and
# create_x3d(depth_factor=5.0) gives X3D-L's), and I3D + 5 non-local blocks of 2C^2 + 4.5C params each
NL_PARAMS = sum(2 * c * c + 9 * c // 2 for c in (512, 512, 1024, 1024, 1024))
PYTORCHVIDEO_PARAMS = {
    "c2d_r50": 24_327_632, "slow_r50_4x16": 32_454_096, "slowfast_r50_4x16": 34_480_216,
    "slowfast_r101_8x8": 62_826_968, "x3d_xs": 3_794_274, "x3d_s": 3_794_274, "x3d_l": 6_153_384,
    "i3d_r50_nl": 28_043_472 + NL_PARAMS,
}
VIDEO_CNNS = sorted(set(REFERENCE) | set(PYTORCHVIDEO_PARAMS))


@functools.lru_cache(maxsize=None)
def meta_model(name: str, **overrides) -> nn.Module:
    return on_meta(lambda: vislab.create_model(name, **overrides))


def randomised(build) -> nn.Module:
    """A model with every float tensor random (BN statistics included), without the cost of
    initialising it first."""
    model = on_meta(build).to_empty(device="cpu")
    torch.manual_seed(0)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if not tensor.is_floating_point():
                tensor.zero_()
            elif name.endswith("running_var"):
                tensor.uniform_(0.5, 1.5)
            else:
                tensor.uniform_(-0.2, 0.2)
    return model.eval()


# ---------------------------------------------------------------------------------------------
# registry figures
# ---------------------------------------------------------------------------------------------

def test_registry_holds_every_video_cnn():
    assert set(VIDEO_CNNS) <= set(list_models(task="video"))
    assert {get_entry(n).family for n in VIDEO_CNNS} == {"resnet3d", "slowfast", "x3d"}
    assert all(get_entry(n).num_classes == 400 for n in VIDEO_CNNS)


@pytest.mark.parametrize("name", VIDEO_CNNS)
def test_params_match_the_reference(name):
    params = count_params(meta_model(name))
    published = REFERENCE.get(name, (None, None))[0]
    if isinstance(published, int):
        assert params == published == get_entry(name).reference.params
    elif isinstance(published, float):  # the table rounds: hold to its precision
        assert round(params / 1e6, 2) == published
    if name in PYTORCHVIDEO_PARAMS:
        assert params == PYTORCHVIDEO_PARAMS[name]


@pytest.mark.parametrize("name", sorted(n for n, (_, gmacs) in REFERENCE.items() if gmacs is not None))
def test_gmacs_within_two_percent(name):
    published = REFERENCE[name][1]
    info = vislab.model_info(name)
    assert info["input"] == list(get_entry(name).input_size)
    assert get_entry(name).reference.gmacs == published
    assert abs(info["gmacs"] - published) / published <= 0.02, (info["gmacs"], published)


def test_entries_without_figures_carry_none():
    unlisted = ("c2d_r50", "i3d_r50_nl", "slow_r50_4x16", "slowfast_r101_8x8")
    assert all(get_entry(n).reference is None for n in unlisted)
    assert get_entry("slow_r50_8x8").reference.gmacs is None


def test_clip_sizes_follow_the_reference_table():
    sizes = {n: get_entry(n).input_size for n in VIDEO_CNNS}
    assert sizes["x3d_xs"] == (3, 4, 160, 160) and sizes["x3d_s"] == (3, 13, 160, 160)
    assert sizes["x3d_m"] == (3, 16, 224, 224) and sizes["x3d_l"] == (3, 16, 312, 312)
    assert sizes["slowfast_r50_8x8"][:2] == sizes["slowfast_r50_4x16"][:2] == (3, 32)  # at the Fast rate
    assert sizes["slow_r50_4x16"][1] == 4 and sizes["i3d_r50"][1] == sizes["slow_r50_8x8"][1] == 8


# ---------------------------------------------------------------------------------------------
# norms for video
# ---------------------------------------------------------------------------------------------

def test_get_norm_builds_3d_norms():
    assert type(get_norm("BN", 8, dims=3)) is nn.BatchNorm3d
    with pytest.raises(ValueError, match="LN"):
        get_norm("LN", 8, dims=3)
    bn = randomised(lambda: nn.BatchNorm3d(8))
    frozen = FrozenBatchNorm2d.convert(randomised(lambda: nn.BatchNorm3d(8)))
    x = torch.randn(2, 8, 3, 4, 4)
    torch.testing.assert_close(frozen(x), bn(x))


# ---------------------------------------------------------------------------------------------
# non-local block
# ---------------------------------------------------------------------------------------------

def reference_nonlocal(block: NonLocalBlock, x: torch.Tensor, instantiation: str) -> torch.Tensor:
    """PySlowFast's ``Nonlocal.forward``, with einsum."""
    n, _, t, h, w = x.shape
    theta = block.theta(x).flatten(2)
    pooled = nn.functional.max_pool3d(x, (1, 2, 2), stride=(1, 2, 2))
    phi, g = block.phi(pooled).flatten(2), block.g(pooled).flatten(2)
    affinity = torch.einsum("nct,ncp->ntp", theta, phi)
    if instantiation == "softmax":
        affinity = (affinity * theta.shape[1] ** -0.5).softmax(dim=2)
    else:
        affinity = affinity / affinity.shape[2]
    out = torch.einsum("ntg,ncg->nct", affinity, g).view(n, -1, t, h, w)
    return x + block.norm(block.proj(out))


@pytest.mark.parametrize("instantiation", ["softmax", "dot_product"])
def test_nonlocal_block_is_identity_at_init_and_keeps_the_shape(instantiation):
    torch.manual_seed(0)
    block = NonLocalBlock(16, instantiation=instantiation)
    assert block.theta.out_channels == 8 and block.norm.weight.abs().sum() == 0
    x = torch.randn(2, 16, 4, 6, 6)
    for mode in (True, False):
        assert torch.equal(block.train(mode)(x), x)


def test_nonlocal_instantiations_match_the_reference_and_differ():
    torch.manual_seed(0)
    x = torch.randn(2, 16, 3, 6, 4)
    outputs = {}
    for instantiation in ("softmax", "dot_product"):
        block = randomised(lambda: NonLocalBlock(16, instantiation=instantiation))
        outputs[instantiation] = block(x)
        assert outputs[instantiation].shape == x.shape
        torch.testing.assert_close(outputs[instantiation], reference_nonlocal(block, x, instantiation))
    assert not torch.allclose(outputs["softmax"], outputs["dot_product"], atol=1e-3)
    with pytest.raises(ValueError, match="gaussian"):
        NonLocalBlock(16, instantiation="gaussian")


def test_i3d_nonlocal_blocks_sit_after_pyslowfast_locations():
    backbone = meta_model("i3d_r50_nl").backbone
    placed = [name for name, m in backbone.named_modules() if isinstance(m, NonLocalBlock)]
    assert placed == [f"res3.{i}.nonlocal_block" for i in (1, 3)] + [
        f"res4.{i}.nonlocal_block" for i in (1, 3, 5)]
    assert backbone.res3[1].nonlocal_block.theta.in_channels == 512
    with pytest.raises(ValueError, match="res3"):
        resnet3d_classifier(num_classes=2, nonlocal_locations=((), (4,), (), ()))


# ---------------------------------------------------------------------------------------------
# ResNet-3D, SlowFast and X3D layouts
# ---------------------------------------------------------------------------------------------

def test_resnet3d_temporal_kernels_and_feature_shapes():
    backbone = meta_model("i3d_r50").backbone
    assert backbone.stem.conv.kernel_size == (5, 7, 7)
    assert [b.conv1.kernel_size[0] for b in backbone.res3] == [3, 1, 3, 1]
    assert [b.conv1.kernel_size[0] for b in backbone.res5] == [1, 3, 1]
    features = backbone.forward_features(torch.zeros(1, 3, 8, 224, 224, device="meta"))
    assert {k: tuple(v.shape) for k, v in features.items()} == {
        "res2": (1, 256, 8, 56, 56), "res3": (1, 512, 4, 28, 28),  # time max-pooled by 2 after res2
        "res4": (1, 1024, 4, 14, 14), "res5": (1, 2048, 4, 7, 7)}
    assert {k: (s.channels, s.stride) for k, s in backbone.output_shape().items()} == {
        "res2": (256, 4), "res3": (512, 8), "res4": (1024, 16), "res5": (2048, 32)}


def test_slow_pathway_frames_follow_the_packpathway_rule():
    clip = torch.arange(32.0).view(1, 1, 32, 1, 1)
    slow = slow_pathway_frames(clip, alpha=4)
    assert slow.flatten().tolist() == [0, 4, 8, 13, 17, 22, 26, 31]  # linspace(0, 31, 8).long()
    assert slow_pathway_frames(clip, alpha=8).flatten().tolist() == [0, 10, 20, 31]
    with pytest.raises(ValueError, match="alpha=8"):
        slow_pathway_frames(clip[:, :, :4], alpha=8)


@pytest.mark.parametrize("name, alpha, kernel", [("slowfast_r50_4x16", 8, 5), ("slowfast_r50_8x8", 4, 7)])
def test_slowfast_lateral_fusion_shapes(name, alpha, kernel):
    backbone = meta_model(name).backbone
    lateral = backbone.lateral
    convs = [m.conv for m in lateral.values()]
    assert [(c.in_channels, c.out_channels) for c in convs] == [(8, 16), (32, 64), (64, 128), (128, 256)]
    assert all(c.kernel_size == (kernel, 1, 1) and c.stride == (alpha, 1, 1) for c in convs)
    # the Slow stages read their own channels plus the fused 2 * beta * C
    stages = [getattr(backbone.slow, s) for s in ("res2", "res3", "res4", "res5")]
    assert [stage[0].conv1.in_channels for stage in stages] == [80, 320, 640, 1280]
    features = backbone.forward_features(torch.zeros(1, 3, 32, 64, 64, device="meta"))
    assert tuple(features["slow_res2"].shape) == (1, 256, 32 // alpha, 16, 16)
    assert tuple(features["fast_res2"].shape) == (1, 32, 32, 16, 16)
    assert tuple(features["slow_res5"].shape) == (1, 2048, 32 // alpha, 2, 2)
    assert backbone.num_features == 2048 + 256


@pytest.mark.parametrize("name, depths", [("x3d_m", [3, 5, 11, 7]), ("x3d_l", [5, 10, 25, 15])])
def test_x3d_stage_widths_and_depths(name, depths):
    backbone = meta_model(name).backbone
    stages = [getattr(backbone, s) for s in ("res2", "res3", "res4", "res5")]
    assert [len(s) for s in stages] == depths
    assert [s[0].conv3.out_channels for s in stages] == [24, 48, 96, 192]
    assert [s[0].conv1.out_channels for s in stages] == [54, 108, 216, 432]  # 2.25x bottlenecks
    assert all(s[0].conv2.groups == s[0].conv2.out_channels for s in stages)  # channel-wise 3x3x3
    assert [isinstance(b.se, nn.Identity) for b in stages[1]][:4] == [False, True, False, True]
    assert [s[0].se.fc1.out_channels for s in stages] == [8, 8, 16, 32]
    assert backbone.stem.conv_xy.out_channels == 24 and backbone.stem.conv_t.kernel_size == (5, 1, 1)
    assert len(stages[0][0].downsample) == 1 and len(stages[1][0].downsample) == 2  # 24 -> 24 has no norm
    assert (backbone.conv5.out_channels, backbone.lin5.out_features, backbone.num_features) == (432, 2048, 2048)
    assert isinstance(stages[0][0], X3DBlock)


# ---------------------------------------------------------------------------------------------
# pytorchvideo equivalence (random weights, small clips)
# ---------------------------------------------------------------------------------------------

def assert_same_logits(reference: nn.Module, converted: dict, name: str, clip: torch.Tensor,
                       reference_input=None):
    model = on_meta(lambda: vislab.create_model(name)).to_empty(device="cpu").eval()
    load_state_dict(model, converted, strict=True)
    with torch.no_grad():
        expected = reference(clip if reference_input is None else reference_input)
        assert (model(clip) - expected).abs().max() <= 1e-4


@pytest.mark.parametrize("name, build", [
    ("i3d_r50", lambda: hub.i3d_r50(head_pool=nn.AdaptiveAvgPool3d)),
    ("slow_r50_8x8", lambda: hub.slow_r50(head_pool=nn.AdaptiveAvgPool3d)),
])
def test_resnet3d_matches_pytorchvideo(name, build):
    reference = randomised(build)
    clip = torch.randn(1, 3, 4, 48, 48)
    assert_same_logits(reference, pytorchvideo_resnet3d(reference.state_dict()), name, clip)


def test_slowfast_matches_pytorchvideo():
    reference = randomised(lambda: hub.slowfast_r50(head_pool=nn.AdaptiveAvgPool3d))
    clip = torch.randn(1, 3, 8, 48, 48)
    assert_same_logits(reference, pytorchvideo_slowfast(reference.state_dict()), "slowfast_r50_8x8", clip,
                       reference_input=[slow_pathway_frames(clip, alpha=4), clip])


def test_x3d_matches_pytorchvideo_through_the_converter_registry():
    reference = randomised(lambda: create_x3d(input_clip_length=4, input_crop_size=48, head_activation=None))
    converted, model = convert_state_dict(source="pytorchvideo", model_name="x3d_s",
                                          state_dict=reference.state_dict())
    clip = torch.randn(2, 3, 4, 48, 48)
    with torch.no_grad():
        assert (model.eval()(clip) - reference(clip)).abs().max() <= 1e-4
    assert converted["backbone.lin5.weight"].shape == (2048, 432)


# ---------------------------------------------------------------------------------------------
# I3D inflation
# ---------------------------------------------------------------------------------------------

def tiny_2d_and_3d(num_classes: int = 5):
    """A 2-D bottleneck ResNet and its 3-D counterpart with temporal kernels everywhere."""
    model_2d = randomised(lambda: ImageClassifier(ResNet(block="bottleneck", depths=(1, 1, 1, 1), width=0.25),
                                                  num_classes=num_classes))
    model_3d = resnet3d_classifier(num_classes=num_classes, depths=(1, 1, 1, 1), width=0.25,
                                   stem_temporal_kernel=5, temporal_kernels=((3,), (3,), (3,), (3,)),
                                   dropout=0.0).eval()
    return model_2d, model_3d


def test_inflated_model_on_a_static_clip_gives_the_2d_response():
    model_2d, model_3d = tiny_2d_and_3d()
    model_3d.load_state_dict(inflate_2d_state_dict(model_2d.state_dict(), model_3d))
    stem_3d, stem_2d = model_3d.backbone.stem.conv.weight, model_2d.backbone.stem.conv.weight
    assert stem_3d.shape[2] == 5 and torch.allclose(stem_3d.sum(2), stem_2d, atol=1e-6)
    image = torch.randn(1, 3, 32, 32)
    # stem (5) and four blocks (3) reach 2 + 4 frames into the zero padding: frame 6 of 13 is clear
    clip = image.unsqueeze(2).repeat(1, 1, 13, 1, 1)
    with torch.no_grad():
        res5_3d = model_3d.backbone.forward_features(clip)["res5"]
        res5_2d = model_2d.backbone.forward_features(image)["res5"]
        torch.testing.assert_close(res5_3d[:, :, 6], res5_2d, atol=1e-5, rtol=1e-4)
        logits_3d = model_3d.head(res5_3d[:, :, 6].mean(dim=(2, 3)))
        torch.testing.assert_close(logits_3d, model_2d(image), atol=1e-5, rtol=1e-4)


def test_inflation_names_what_does_not_fit():
    model_2d, model_3d = tiny_2d_and_3d()
    state = model_2d.state_dict()
    with pytest.raises(ValueError, match=r"head\.fc\.weight \(2-D \(7, 512\) vs 3-D \(5, 512\)\)"):
        inflate_2d_state_dict({**state, "head.fc.weight": torch.zeros(7, 512)}, model_3d)
    with pytest.raises(ValueError, match="backbone.extra"):
        inflate_2d_state_dict({**state, "backbone.extra": torch.zeros(1)}, model_3d)
    headless = {k: v for k, v in state.items() if not k.startswith("head.")}
    inflated = inflate_2d_state_dict(headless, model_3d)
    assert torch.equal(inflated["head.fc.weight"], model_3d.state_dict()["head.fc.weight"])


@pytest.mark.parametrize("name", ["i3d_r50", "slow_r50_8x8", "i3d_r50_nl"])
def test_torchvision_resnet50_inflates_into_every_resnet3d(name):
    resnet50 = on_meta(torchvision.models.resnet50)
    state_2d = {k: v for k, v in torchvision_resnet(resnet50.state_dict()).items() if not k.startswith("head.")}
    model_3d = meta_model(name)
    model_3d.load_state_dict(inflate_2d_state_dict(state_2d, model_3d))  # strict: every key in place and shape
