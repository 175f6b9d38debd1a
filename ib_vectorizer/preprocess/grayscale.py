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
from .image import open_image, reduce_target, resize_and_crop

_WIDE_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")


def _to_uint8_image(values: np.ndarray) -> Image.Image:
    return Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8), mode="L")


def depth_to_disparity_image(depth: np.ndarray) -> Image.Image:
    """Metric depth (0 = unknown) → 8-bit disparity scaled to its own maximum."""
    depth = depth.astype(np.float64)
    valid = np.isfinite(depth) & (depth > 0)
    if not valid.any():
        raise MediaError("16-bit depth map has no valid (positive) depth values")
    disparity = np.zeros_like(depth)
    disparity[valid] = 1.0 / depth[valid]
    return _to_uint8_image(255.0 * disparity / disparity.max())


def thermal_counts_image(counts: np.ndarray) -> Image.Image:
    """Raw thermal counts → 8 bits, linearly from the image's minimum to its maximum."""
    counts = counts.astype(np.float64)
    if not np.isfinite(counts).all():
        raise MediaError("16-bit thermal image has non-finite values")
    low, high = counts.min(), counts.max()
    scaled = np.zeros_like(counts) if high == low else (counts - low) * (255.0 / (high - low))
    return _to_uint8_image(scaled)


def _load_grayscale(data: bytes, what: str, size: int, decode: str) -> torch.Tensor:
    image = open_image(data, what=f"{what} image", reduce_to=reduce_target(decode, size))
    if image.mode in _WIDE_MODES:
        values = np.asarray(image)
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
