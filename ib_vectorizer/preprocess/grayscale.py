"""Depth and thermal maps → (1, S, S), following the Weaviate reference container.

S is the model's ``image_size`` (224 for imagebind_huge). An 8-bit image (any
mode; colour is reduced to luma as Pillow's ``convert("L")`` does) is resized
short side S bicubic, centre-cropped, scaled to [0, 1] and normalised with the
first CLIP channel's mean and std.

16-bit single-channel images (PNG ``I;16``) are not what the reference reads,
so they get a documented conversion to 8 bits first (Pillow would otherwise
clip every value above 255):

* depth is taken as metric depth (e.g. millimetres, 0 = no measurement) and
  turned into disparity, because ImageBind was trained on disparity maps:
  ``255 · (1/d) / max(1/d)`` over valid pixels, invalid pixels 0 (far);
* thermal is taken as raw sensor counts and scaled linearly from its minimum
  to its maximum onto 0–255.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import functional as TF

from ..errors import MediaError
from .config import IMAGEBIND_HUGE
from .constants import CLIP_MEAN, CLIP_STD
from .image import open_image, picture_cost, reduce_target, resize_and_crop, stored_bytes_per_pixel
from .limits import ItemCost

_WIDE_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")


def _to_uint8_image(scaled: np.ndarray) -> Image.Image:
    """Float32 values on 0–255 → an 8-bit image (rounded half to even, clipped), in place."""
    np.rint(scaled, out=scaled)
    np.clip(scaled, 0, 255, out=scaled)
    return Image.fromarray(scaled.astype(np.uint8), mode="L")


def depth_to_disparity_image(depth: np.ndarray) -> Image.Image:
    """Metric depth (0 = unknown) → 8-bit disparity scaled to its own maximum.

    Float32 throughout and in place: a map of N pixels takes about 5·N bytes
    beyond its own (float64 took 30·N).
    """
    with np.errstate(invalid="ignore"):
        valid = depth > 0  # NaN compares false: unknown, like 0
    if depth.dtype.kind == "f":
        valid &= np.isfinite(depth)
    if not valid.any():
        raise MediaError("16-bit depth map has no valid (positive) depth values")
    disparity = np.zeros(depth.shape, np.float32)
    np.divide(1.0, depth, out=disparity, where=valid, dtype=np.float32)
    disparity *= 255.0 / disparity.max()
    return _to_uint8_image(disparity)


def thermal_counts_image(counts: np.ndarray) -> Image.Image:
    """Raw thermal counts → 8 bits, linearly from the image's minimum to its maximum."""
    if counts.dtype.kind == "f" and not np.isfinite(counts).all():
        raise MediaError("16-bit thermal image has non-finite values")
    low, high = counts.min(), counts.max()
    scaled = np.subtract(counts, low, dtype=np.float32)
    if high > low:
        scaled *= np.float32(255.0 / (float(high) - float(low)))
    return _to_uint8_image(scaled)


def map_cost(
    data: bytes, what: str, size: int = IMAGEBIND_HUGE.image_size, decode: str = "exact"
) -> ItemCost:
    """What decoding a depth or thermal map takes, from its header."""

    def conversion(mode: str) -> int:
        if mode in _WIDE_MODES:  # the array, float32 values, a mask and the 8-bit result
            return stored_bytes_per_pixel(mode) + 4 + 1 + 2
        return 0 if mode == "L" else 1

    return picture_cost(data, size, decode, f"{what} image", conversion)


def _load_grayscale(data: bytes, what: str, size: int, decode: str) -> torch.Tensor:
    image = open_image(data, what=f"{what} image", reduce_to=reduce_target(decode, size))
    if image.mode in _WIDE_MODES:
        values = np.asarray(image)
        del image  # its pixels are in ``values`` now
        image = (
            depth_to_disparity_image(values) if what == "depth" else thermal_counts_image(values)
        )
    else:
        image = image.convert("L")
    tensor = TF.to_tensor(resize_and_crop(image, size))
    return TF.normalize(tensor, CLIP_MEAN[:1], CLIP_STD[:1])


def load_depth(
    data: bytes, size: int = IMAGEBIND_HUGE.image_size, decode: str = "exact"
) -> torch.Tensor:
    """Encoded depth (or disparity) map → float32 (1, size, size)."""
    return _load_grayscale(data, "depth", size, decode)


def load_thermal(
    data: bytes, size: int = IMAGEBIND_HUGE.image_size, decode: str = "exact"
) -> torch.Tensor:
    """Encoded thermal image → float32 (1, size, size)."""
    return _load_grayscale(data, "thermal", size, decode)
