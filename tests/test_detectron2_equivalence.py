"""detectron2's ViTDet and MViTv2 detectors (Mask R-CNN and Cascade Mask R-CNN) converted from its
``.pkl`` checkpoint layout give detectron2's own outputs: the feature pyramid, the RPN proposals
and the detections (boxes, scores, classes, mask probabilities).

The reference tensors in tests/data/detectron2 were computed once by detectron2 itself, run from
its source outside vislab, on reduced versions of its official LazyConfigs with random weights;
tests/data/detectron2/README.md says exactly how.
"""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file
from torch.nn import functional as F

import vislab
from helpers import DATA
from vislab.convert import convert_file
from vislab.weights import load_weights, read_weights

REFERENCE = DATA / "detectron2"
MEAN = torch.tensor([123.675, 116.28, 103.53])[:, None, None]  # detectron2's RGB ImageNet constants
STD = torch.tensor([58.395, 57.12, 57.375])[:, None, None]
VITDET = dict(embed_dim=32, depth=4, num_heads=2, img_size=128, window_size=3, global_blocks=[1, 3],
              residual_blocks=[1], drop_path_rate=0.0, neck_channels=16, head_conv_dim=16, head_fc_dim=32)
MVITV2 = dict(backbone_options={"depths": [1, 2, 2, 1], "embed_dim": 8, "img_size": 64, "window_size": 8,
                                "final_norm": False}, fpn_channels=16, head_conv_dim=16, head_fc_dim=32)
CASES = {
    "mask_rcnn_vitdet": ("mask_rcnn_vitdet_b", VITDET),
    "cascade_mask_rcnn_vitdet": ("cascade_mask_rcnn_vitdet_b", VITDET),
    "mask_rcnn_mvitv2": ("mask_rcnn_mvitv2_t", MVITV2),
    "cascade_mask_rcnn_mvitv2": ("cascade_mask_rcnn_mvitv2_t", MVITV2),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_converted_detectron2_checkpoint_gives_detectron2_outputs(tmp_path, case):
    name, options = CASES[case]
    converted = tmp_path / "converted.safetensors"
    convert_file(source="detectron2", model_name=name, src=REFERENCE / f"{case}.pkl", dst=converted, options=options)
    reference = load_file(REFERENCE / f"{case}.safetensors")
    model = vislab.create_model(name, num_classes=3, **options).eval()
    assert load_weights(model, converted).ok

    image = (reference["image"].float() - MEAN) / STD
    height, width = image.shape[-2:]
    batch = F.pad(image, (0, (-width) % 32, 0, (-height) % 32))[None]  # vislab's collate pads to 32
    with torch.no_grad():
        pyramid = model.pyramid(batch)
        proposals, _ = model.rpn(list(pyramid.values()), [(height, width)])
        detections = model(batch, [(height, width)])[0]

    for level, feature in pyramid.items():
        torch.testing.assert_close(feature[0], reference[f"features.{level}"], atol=2e-5, rtol=0)
    # the same proposals (detectron2 orders equal scores differently)
    assert proposals[0].shape == reference["proposals"].shape
    distances = torch.cdist(proposals[0], reference["proposals"], compute_mode="donot_use_mm_for_euclid_dist")
    assert distances.min(dim=1).values.max() <= 1e-3
    assert len(detections["boxes"]) == len(reference["boxes"]) == 100
    assert torch.equal(detections["labels"], reference["labels"])
    torch.testing.assert_close(detections["scores"], reference["scores"], atol=1e-5, rtol=0)
    torch.testing.assert_close(detections["boxes"], reference["boxes"], atol=1e-3, rtol=0)
    torch.testing.assert_close(detections["mask_probs"][:20], reference["mask_probs"], atol=1e-5, rtol=0)


def test_model_zoo_pickle_reads_as_tensors():
    state, _ = read_weights(REFERENCE / "mask_rcnn_vitdet.pkl")  # protocol 2, byte strings via _codecs
    assert state["backbone.net.pos_embed"].shape == (1, 197, 32)
    assert all(isinstance(v, torch.Tensor) for v in state.values())
