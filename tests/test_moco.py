"""MoCo v1/v2/v3: momentum update, queue, losses against hand computation, split and shuffled
BatchNorm, two-process gathering, LARS, official-checkpoint conversion and augmentations."""
from __future__ import annotations

import math
import socket

import numpy as np
import pytest
import timm
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
import torchvision
from PIL import Image
from torch import nn

import vislab
from vislab.convert import convert_file, convert_state_dict
from vislab.engine.lars import LARS
from vislab.engine.optim import build_optimizer
from vislab.models import create_model
from vislab.models.backbones.resnet import ResNet
from vislab.models.complexity import on_meta
from vislab.ssl.augment import moco_transform
from vislab.ssl.gather import concat_all_gather
from vislab.ssl.moco import MoCo, info_nce_loss, momentum_update
from vislab.ssl.moco_v3 import MoCoV3, contrastive_loss
from vislab.weights import WeightsError, load_backbone_weights, save_weights


def tiny_resnet(norm: str = "GN") -> ResNet:
    return ResNet(block="basic", depths=(1, 1, 1, 1), width=0.125, norm=norm, norm_groups=2, small_stem=True)


def tiny_moco(*, norm: str = "GN", queue_size: int = 8, bn_splits: int = 1, momentum: float = 0.9) -> MoCo:
    return MoCo(backbone=tiny_resnet(norm), dim=4, mlp_hidden=8, queue_size=queue_size, momentum=momentum,
                temperature=0.2, bn_splits=bn_splits)


def images(count: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(count, 3, 8, 8, generator=torch.Generator().manual_seed(seed))


# ---- momentum encoder, queue, InfoNCE -------------------------------------------------------------

def test_momentum_update_formula():
    online, target = nn.Linear(3, 2), nn.Linear(3, 2)
    before = [p.clone() for p in target.parameters()]
    momentum_update(online=online, target=target, momentum=0.9)
    for old, new, source in zip(before, target.parameters(), online.parameters()):
        torch.testing.assert_close(new, 0.9 * old + 0.1 * source)


def test_training_forward_moves_key_encoder_and_eval_forward_changes_nothing():
    torch.manual_seed(0)
    model = tiny_moco(momentum=0.5)
    assert all(not p.requires_grad for p in model.momentum_backbone.parameters())
    with torch.no_grad():  # make the encoders differ, so the update is visible
        for p in model.backbone.parameters():
            p.add_(1.0)
    keys_before = [p.clone() for p in model.momentum_backbone.parameters()]
    queue_before = model.queue.clone()
    model.eval()
    model([images(4), images(4, 1)])
    assert all(torch.equal(a, b) for a, b in zip(keys_before, model.momentum_backbone.parameters()))
    assert torch.equal(model.queue, queue_before) and int(model.queue_ptr) == 0
    model.train()
    model([images(4), images(4, 1)])
    for old, new, query in zip(keys_before, model.momentum_backbone.parameters(), model.backbone.parameters()):
        torch.testing.assert_close(new, 0.5 * old + 0.5 * query)


def test_queue_wraps_around_and_overwrites_the_oldest_keys():
    model = tiny_moco(queue_size=8)
    batches = [F.normalize(torch.randn(4, 4), dim=1) for _ in range(3)]
    model.enqueue(batches[0])
    assert int(model.queue_ptr) == 4
    model.enqueue(batches[1])
    assert int(model.queue_ptr) == 0  # wrapped
    model.enqueue(batches[2])
    assert int(model.queue_ptr) == 4
    torch.testing.assert_close(model.queue[:4], batches[2])  # the oldest (first) batch is gone
    torch.testing.assert_close(model.queue[4:], batches[1])


def test_forward_enqueues_its_keys_after_the_loss():
    torch.manual_seed(0)
    model = tiny_moco(queue_size=8)
    key_images = images(4, 1)
    out = model([images(4), key_images])
    out["loss"].backward()  # the loss still back-propagates although the queue changed in place
    torch.testing.assert_close(model.queue[:4], model.encode_keys(key_images))
    assert 0.0 <= float(out["accuracy"]) <= 100.0


def test_queue_size_must_be_a_multiple_of_the_global_batch():
    model = tiny_moco(queue_size=6)
    with pytest.raises(ValueError, match="queue_size 6 is not a multiple of the 4 keys"):
        model.enqueue(torch.randn(4, 4))


def test_info_nce_matches_hand_computation():
    queries = torch.tensor([[1.0, 0.0]])
    keys = torch.tensor([[0.6, 0.8]])
    negatives = torch.tensor([[0.0, 1.0], [-1.0, 0.0]])
    loss, logits = info_nce_loss(queries=queries, keys=keys, negatives=negatives, temperature=0.5)
    # logits = [0.6, 0, -1] / 0.5; the positive sits at index 0
    expected = -1.2 + math.log(math.exp(1.2) + math.exp(0.0) + math.exp(-2.0))
    torch.testing.assert_close(logits, torch.tensor([[1.2, 0.0, -2.0]]))
    assert float(loss) == pytest.approx(expected, rel=1e-6)


# ---- split BatchNorm (one process) ----------------------------------------------------------------

def test_split_bn_keys_equal_each_shuffled_chunk_encoded_alone():
    torch.manual_seed(0)
    model = tiny_moco(norm="BN", bn_splits=2)
    batch = images(8)
    torch.manual_seed(5)
    keys = model.encode_keys(batch)
    torch.manual_seed(5)
    order = torch.randperm(8)
    chunks = [model._momentum_embed(batch[order][i:i + 4]) for i in (0, 4)]
    torch.testing.assert_close(keys, torch.cat(chunks)[torch.argsort(order)])
    whole = model._momentum_embed(batch)  # one BN over all 8 differs: the split is real
    assert not torch.allclose(keys, whole, atol=1e-4)


def test_bn_splits_must_divide_the_batch():
    model = tiny_moco(norm="BN", bn_splits=3)
    with pytest.raises(ValueError, match="bn_splits=3 does not divide the batch of 8"):
        model.encode_keys(images(8))


# ---- MoCo v3 --------------------------------------------------------------------------------------

def test_v3_contrastive_loss_matches_hand_computation_with_the_2t_scale():
    temperature = 0.2
    queries = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    keys = torch.tensor([[1.0, 1.0], [0.0, 3.0]])
    loss, accuracy = contrastive_loss(queries=queries, keys=keys, temperature=temperature)
    c = 1 / math.sqrt(2)  # cosine of (q0, k0) and of (q1, k0); (q0, k1) is 0 and (q1, k1) is 1
    row0 = -c / temperature + math.log(math.exp(c / temperature) + math.exp(0.0))
    row1 = -1 / temperature + math.log(math.exp(c / temperature) + math.exp(1 / temperature))
    assert float(loss) == pytest.approx((row0 + row1) / 2 * 2 * temperature, rel=1e-5)
    assert float(accuracy) == pytest.approx(100.0)


def tiny_moco_v3(**options) -> MoCoV3:
    return MoCoV3(backbone=tiny_resnet(), dim=4, mlp_dim=8, **options)


def test_v3_loss_is_symmetric_sum_over_the_two_views():
    torch.manual_seed(0)
    model = tiny_moco_v3(temperature=0.2).eval()
    first, second = images(4), images(4, 1)
    out = model([first, second])
    with torch.no_grad():
        q1, q2 = (model.predictor(model.projector(model.backbone.forward_pooled(x))) for x in (first, second))
        k1, k2 = (model.momentum_projector(model.momentum_backbone.forward_pooled(x)) for x in (first, second))
    expected = (contrastive_loss(queries=q1, keys=k2, temperature=0.2)[0]
                + contrastive_loss(queries=q2, keys=k1, temperature=0.2)[0])
    torch.testing.assert_close(out["loss"], expected)


def test_v3_mlps_follow_the_official_layout():
    model = tiny_moco_v3(projector_layers=3, predictor_last_bn=False)
    kinds = [type(m).__name__ for m in model.projector]
    assert kinds == ["Linear", "BatchNorm1d", "ReLU", "Linear", "BatchNorm1d", "ReLU", "Linear", "BatchNorm1d"]
    assert not model.projector[-1].affine and model.projector[0].bias is None
    assert isinstance(model.predictor[-1], nn.Linear)  # ResNet predictor: no final BN


def test_v3_momentum_follows_the_cosine_schedule():
    torch.manual_seed(0)
    model = tiny_moco_v3(momentum=0.99)
    assert model.current_momentum() == pytest.approx(0.99)  # constant until the length is known
    model.set_total_steps(4)
    assert model.current_momentum() == pytest.approx(0.99)
    model.step.fill_(2)
    assert model.current_momentum() == pytest.approx(1 - 0.01 / 2)
    model.step.fill_(4)
    assert model.current_momentum() == pytest.approx(1.0)
    model.step.fill_(0)
    model([images(4), images(4, 1)])
    assert int(model.step) == 1
    model.eval()
    model([images(4), images(4, 1)])
    assert int(model.step) == 1  # evaluation does not advance the schedule
    assert "step" in model.state_dict()


def test_v3_frozen_patch_projection():
    vit = create_model("vit_s16", num_classes=1, img_size=32, depth=1, embed_dim=32, num_heads=2).backbone
    model = MoCoV3(backbone=vit, dim=4, mlp_dim=8, projector_layers=3, freeze_patch_embed=True)
    assert not any(p.requires_grad for p in model.backbone.patch_embed.parameters())
    assert model.backbone.blocks[0].attn.qkv.weight.requires_grad
    with pytest.raises(ValueError, match="patch embedding"):
        MoCoV3(backbone=tiny_resnet(), freeze_patch_embed=True)


# ---- registry -------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, classifier, kind", [
    ("moco_v1_r50", "resnet50", MoCo), ("moco_v2_r18_gn", "resnet18", MoCo),
    ("moco_v3_r50", "resnet50", MoCoV3), ("moco_v3_vit_s16", "vit_s16", MoCoV3),
])
def test_registry_models_keep_a_classifier_backbone(name, classifier, kind):
    model = on_meta(lambda: create_model(name))
    options = {"moco_v2_r18_gn": {"width": 0.5, "norm": "GN", "norm_groups": 8, "small_stem": True},
               "moco_v3_vit_s16": {"num_heads": 12, "pos_embed": "sincos"}}.get(name, {})
    reference = on_meta(lambda: create_model(classifier, **options))
    assert isinstance(model, kind) and model.views_per_image == 2
    ours = {k for k in model.state_dict() if k.startswith("backbone.")}
    assert ours == {k for k in reference.state_dict() if k.startswith("backbone.")}


def test_model_info_counts_both_views():
    """Complexity feeds a MoCo model its two views: query encoder on one, key encoder on the other."""
    moco = vislab.model_info("moco_v2_r18_gn")
    trunk = vislab.model_info("resnet18", input_size=(3, 32, 32), width=0.5, norm="GN", norm_groups=8,
                              small_stem=True)
    assert moco["input"] == [3, 32, 32]
    assert moco["gmacs"] == pytest.approx(2 * trunk["gmacs"], rel=0.02)


# ---- two processes (gloo) -------------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _two_process_worker(rank: int, port: int) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        torch.set_num_threads(1)
        gathered = concat_all_gather(torch.full((2, 3), float(rank)))
        assert torch.equal(gathered, torch.tensor([[0.0] * 3] * 2 + [[1.0] * 3] * 2))

        torch.manual_seed(0)  # the same initial model on both processes, as DDP ensures
        model = tiny_moco(norm="GN", queue_size=8)
        own_keys = images(2, 10 + rank)
        model([images(2, rank), own_keys])
        assert int(model.queue_ptr) == 4
        expected = concat_all_gather(model._momentum_embed(own_keys))  # rank 0's keys, then rank 1's
        torch.testing.assert_close(model.queue[:4], expected)
        # shuffled BN hands every process its own images' keys back in order
        torch.testing.assert_close(model.encode_keys(own_keys), model._momentum_embed(own_keys))

        q = torch.randn(4, 3, generator=torch.Generator().manual_seed(3))
        k = torch.randn(4, 3, generator=torch.Generator().manual_seed(4))
        loss, _ = contrastive_loss(queries=q[2 * rank:2 * rank + 2], keys=k[2 * rank:2 * rank + 2],
                                   temperature=0.5)
        total = loss.detach().clone()
        dist.all_reduce(total)
        # one process over all 4 pairs; 2T = 1 at T = 0.5
        whole = F.cross_entropy(F.normalize(q, dim=1) @ F.normalize(k, dim=1).T / 0.5, torch.arange(4))
        torch.testing.assert_close(total / 2, whole)  # labels offset by rank * batch
    finally:
        dist.destroy_process_group()


def test_two_processes_gather_keys_into_one_queue():
    # forked rather than spawned: the children start with torch and vislab already imported
    mp.start_processes(_two_process_worker, args=(_free_port(),), nprocs=2, join=True, start_method="fork")


# ---- LARS -----------------------------------------------------------------------------------------

def test_lars_step_matches_hand_computation():
    weight = nn.Parameter(torch.tensor([[3.0, 4.0]]))
    bias = nn.Parameter(torch.tensor([1.0, 2.0]))
    exempt = nn.Parameter(torch.tensor([[1.0, 1.0]]))
    optimizer = LARS([{"params": [weight, bias], "weight_decay": 0.5}, {"params": [exempt], "weight_decay": 0.0}],
                     lr=0.1, momentum=0.9, trust_coefficient=0.01)
    expected_weight, buffer = np.array([3.0, 4.0]), np.zeros(2)
    expected_exempt, exempt_buffer = np.array([1.0, 1.0]), np.zeros(2)
    for _ in range(2):
        for p in (weight, bias, exempt):
            p.grad = torch.ones_like(p) * 0.5
        update = 0.5 + 0.5 * expected_weight  # g + wd * w
        trust = 0.01 * np.linalg.norm(expected_weight) / np.linalg.norm(update)
        buffer = 0.9 * buffer + trust * update
        expected_weight = expected_weight - 0.1 * buffer
        # a 2-D parameter without weight decay is still scaled by its trust ratio
        exempt_update = np.full(2, 0.5)
        exempt_buffer = 0.9 * exempt_buffer + 0.01 * np.linalg.norm(expected_exempt) / np.linalg.norm(exempt_update) * exempt_update
        expected_exempt = expected_exempt - 0.1 * exempt_buffer
        optimizer.step()
    np.testing.assert_allclose(weight.detach().numpy()[0], expected_weight, rtol=1e-6)
    np.testing.assert_allclose(exempt.detach().numpy()[0], expected_exempt, rtol=1e-6)
    # 1-D parameters: plain SGD momentum (0.5, then 0.5 + 0.9 * 0.5)
    np.testing.assert_allclose(bias.detach().numpy(), [1.0 - 0.1 * 1.45, 2.0 - 0.1 * 1.45], rtol=1e-6)


def test_build_optimizer_makes_lars():
    optimizer = build_optimizer(nn.Linear(3, 2), name="lars", lr=0.3, weight_decay=1e-6, decay_norm_and_bias=False,
                                momentum=0.9, nesterov=False, betas=(0.9, 0.999), eps=1e-8)
    assert isinstance(optimizer, LARS)
    assert sorted(g["weight_decay"] for g in optimizer.param_groups) == [0.0, 1e-6]


# ---- conversion of official checkpoints -----------------------------------------------------------

def test_convert_official_v2_resnet_checkpoint(tmp_path):
    torch.manual_seed(0)
    reference = torchvision.models.resnet18()
    reference.fc = nn.Identity()
    trunk = reference.state_dict()
    head = {"fc.0.weight": torch.randn(512, 512), "fc.0.bias": torch.zeros(512),
            "fc.2.weight": torch.randn(128, 512), "fc.2.bias": torch.zeros(128)}
    encoder = {**trunk, **head}
    state = {**{f"module.encoder_q.{k}": v for k, v in encoder.items()},
             **{f"module.encoder_k.{k}": v.clone() for k, v in encoder.items()},
             "module.queue": torch.randn(128, 16), "module.queue_ptr": torch.zeros(1, dtype=torch.long)}
    src, dst = tmp_path / "moco_v2.pth.tar", tmp_path / "r18.safetensors"
    torch.save({"epoch": 200, "arch": "resnet18", "state_dict": state}, src)
    assert "no classifier" in convert_file(source="moco", model_name="resnet18", src=src, dst=dst)

    model = create_model("resnet18", num_classes=10).eval()
    load_backbone_weights(model, dst)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model.backbone.forward_pooled(x), reference.eval()(x), atol=1e-5, rtol=1e-5)


def test_convert_official_v3_vit_checkpoint(tmp_path):
    torch.manual_seed(0)
    reference = timm.models.vision_transformer.VisionTransformer(
        img_size=32, patch_size=16, embed_dim=192, depth=2, num_heads=3, num_classes=0).eval()
    trunk = reference.state_dict()
    projector = {"head.0.weight": torch.randn(64, 192), "head.1.weight": torch.ones(64),
                 "head.1.bias": torch.zeros(64), "head.1.running_mean": torch.zeros(64),
                 "head.1.running_var": torch.ones(64), "head.3.weight": torch.randn(16, 64),
                 "head.4.running_mean": torch.zeros(16), "head.4.running_var": torch.ones(16)}
    state = {**{f"module.base_encoder.{k}": v for k, v in {**trunk, **projector}.items()},
             **{f"module.momentum_encoder.{k}": v.clone() for k, v in {**trunk, **projector}.items()},
             "module.predictor.0.weight": torch.randn(64, 16)}
    options = {"img_size": 32, "embed_dim": 192, "depth": 2, "num_heads": 3}
    converted, _ = convert_state_dict(source="moco", model_name="vit_s16", state_dict=state, options=options)
    assert all(k.startswith("backbone.") for k in converted)

    model = create_model("vit_s16", num_classes=1, **options).eval()
    save_weights(converted, tmp_path / "vit.safetensors")
    load_backbone_weights(model, tmp_path / "vit.safetensors")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model.backbone.forward_pooled(x), reference(x), atol=1e-5, rtol=1e-5)


def test_convert_names_the_expected_prefixes_when_none_match():
    with pytest.raises(WeightsError, match="module.encoder_q"):
        convert_state_dict(source="moco", model_name="resnet18", state_dict={"conv1.weight": torch.zeros(1)})


# ---- augmentations --------------------------------------------------------------------------------

@pytest.mark.parametrize("version", ["v1", "v2", "v3"])
def test_moco_transform_gives_two_different_views(version):
    pixels = np.random.default_rng(0).integers(0, 256, (40, 48, 3), dtype=np.uint8)
    transform = moco_transform(version=version, image_size=32, crop_scale=(0.2, 1.0),
                               mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    torch.manual_seed(0)
    first, second = transform(Image.fromarray(pixels))
    assert first.shape == second.shape == (3, 32, 32) and first.dtype == torch.float32
    assert not torch.allclose(first, second)
    torch.manual_seed(0)  # the draws come from torch's default generator
    again = transform(Image.fromarray(pixels))
    assert torch.equal(again[0], first) and torch.equal(again[1], second)


def test_moco_transform_rejects_unknown_version():
    with pytest.raises(ValueError, match="'v4'"):
        moco_transform(version="v4", image_size=32, mean=(0.5,) * 3, std=(0.5,) * 3)
