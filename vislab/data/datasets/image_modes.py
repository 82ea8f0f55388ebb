"""Every image mode PIL decodes, brought to 8-bit RGB by the range its values really have.

``Image.convert("RGB")`` clips 16-bit, 32-bit and float pixels to 0..255, which turns most
16-bit PNGs and scientific TIFFs white. Here 16-bit images are scaled from 0..65535, 32-bit
integer images the same way when their values fit 16 bits (Pillow opens some 16-bit PNGs as
32-bit) and by their own minimum and maximum otherwise, float images from 0..1 when their values
lie there and by their own minimum and maximum otherwise. Palette, alpha, CMYK and other 8-bit
modes convert as PIL does; any other mode is refused."""
from __future__ import annotations

import numpy as np
from PIL import Image

SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")
HIGH_RANGE_MODES = (*SIXTEEN_BIT_MODES, "I", "F")
# modes whose PIL conversion to RGB keeps their whole range
EIGHT_BIT_MODES = ("1", "L", "P", "PA", "LA", "La", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr", "LAB", "HSV")


class UnsupportedImageModeError(ValueError):
    """An image mode vislab does not know how to show as RGB."""


def _to_bytes(values: np.ndarray, mode: str) -> np.ndarray:
    if mode in SIXTEEN_BIT_MODES:
        low, high = 0.0, 65535.0
    elif mode == "I" and values.min() >= 0 and values.max() <= 65535:
        low, high = 0.0, 65535.0
    elif mode == "F" and values.min() >= 0 and values.max() <= 1:
        low, high = 0.0, 1.0
    else:
        finite = values[np.isfinite(values)]
        low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    scaled = (np.nan_to_num(values, nan=low) - low) / max(high - low, 1e-12) * 255.0
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def to_rgb(image: Image.Image) -> Image.Image:
    """``image`` as 8-bit RGB, its values scaled by their real range (module docstring)."""
    if image.mode in HIGH_RANGE_MODES:
        values = np.asarray(image, dtype=np.float64)
        return Image.fromarray(_to_bytes(values, image.mode), mode="L").convert("RGB")
    if image.mode in ("P", "PA") and "transparency" in image.info:
        image = image.convert("RGBA")  # what PIL asks for palette images with transparency
    if image.mode in EIGHT_BIT_MODES:
        return image.convert("RGB")
    raise UnsupportedImageModeError(f"image mode {image.mode!r} is not supported; save it as 8- or 16-bit "
                                    f"grey, RGB, RGBA or palette, or as a 32-bit or float grey TIFF")
