"""Images in every mode PIL decodes reach the model scaled by their real range, in training,
evaluation and prediction alike (all read through ``read_rgb``); other modes and decompression
bombs are errors naming the file."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from vislab.data.datasets import image_modes
from vislab.data.datasets.image_folder import BadImageError, ImageFolderDataset, read_rgb

RAMP = np.linspace(0.0, 1.0, 32 * 32).reshape(32, 32)


def _grey(path) -> np.ndarray:
    rgb = np.asarray(read_rgb(path))
    assert rgb.dtype == np.uint8 and rgb.shape == (32, 32, 3)
    return rgb[..., 0].astype(np.float64)


@pytest.mark.parametrize("name, values", [
    ("sixteen_bit.png", (RAMP * 65535).astype(np.uint16)),
    ("float.tif", RAMP.astype(np.float32)),
    ("float_wide.tif", (RAMP * 40.0 - 7.0).astype(np.float32)),
    ("int32.tif", (RAMP * 2_000_000).astype(np.int32)),
])
def test_high_range_images_are_scaled_not_clipped(tmp_path, name, values):
    path = tmp_path / name
    Image.fromarray(values).save(path)
    assert Image.open(path).mode in ("I;16", "I", "F")
    grey = _grey(path)
    assert np.abs(grey - RAMP * 255).max() <= 1.0  # the whole ramp, not a white image


def test_palette_and_alpha_images_keep_their_colours(tmp_path):
    rgb = np.zeros((32, 32, 3), np.uint8)
    rgb[:16] = (200, 30, 40)
    rgb[16:] = (10, 120, 230)
    Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=4).save(tmp_path / "palette.png")
    rgba = np.concatenate([rgb, np.full((32, 32, 1), 128, np.uint8)], axis=2)
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "alpha.png")
    for name in ("palette.png", "alpha.png"):
        assert (np.asarray(read_rgb(tmp_path / name)).astype(int) - rgb).__abs__().max() <= 2


def test_unsupported_mode_and_decompression_bomb_name_the_file(tmp_path, monkeypatch):
    path = tmp_path / "grey.tif"
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(path)
    # pretend 8-bit grey were a mode vislab does not know (PIL decodes none that vislab refuses)
    monkeypatch.setattr(image_modes, "EIGHT_BIT_MODES", ("RGB",))
    with pytest.raises(BadImageError, match=rf"{path}.*mode 'L' is not supported"):
        read_rgb(path)
    monkeypatch.undo()

    big = tmp_path / "class_a" / "big.png"
    big.parent.mkdir()
    Image.new("RGB", (64, 64)).save(big)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(BadImageError, match=rf"{big}.*decompression-bomb limit of 1000"):
        read_rgb(big)
    assert ImageFolderDataset(tmp_path, skip_bad=True)[0] is None  # skipped with data.skip_bad
