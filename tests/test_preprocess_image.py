"""Images, depth and thermal maps: the reference rules on inputs the fixture lacks."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from ib_vectorizer.errors import MediaError
from ib_vectorizer.preprocess.constants import CLIP_MEAN, CLIP_STD
from ib_vectorizer.preprocess.grayscale import load_depth, load_thermal
from ib_vectorizer.preprocess.image import load_image, open_image

from .fixture_data import INPUTS


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def gradient(width: int, height: int, mode: str = "RGB") -> Image.Image:
    """A smooth, asymmetric test picture, so a wrong crop or flip shows."""
    y, x = np.mgrid[0:height, 0:width]
    channels = [
        (255 * x / max(width - 1, 1)),
        (255 * y / max(height - 1, 1)),
        (127 + 120 * np.sin(x / 9.0) * np.cos(y / 13.0)),
    ]
    rgb = np.stack(channels, axis=-1).round().astype(np.uint8)
    return Image.fromarray(rgb, "RGB").convert(mode)


def by_hand(image: Image.Image, channels: int = 3) -> torch.Tensor:
    """The rule written out with plain Pillow and numpy, independent of torchvision."""
    width, height = image.size
    short, long = min(width, height), max(width, height)
    new_long = int(224 * long / short)
    size = (224, new_long) if width <= height else (new_long, 224)
    resized = image.resize(size, Image.Resampling.BICUBIC)
    left = round((resized.width - 224) / 2.0)
    top = round((resized.height - 224) / 2.0)
    cropped = np.asarray(resized.crop((left, top, left + 224, top + 224)), dtype=np.float32) / 255
    if cropped.ndim == 2:
        cropped = cropped[..., None]
    mean = np.array(CLIP_MEAN[:channels], dtype=np.float32)
    std = np.array(CLIP_STD[:channels], dtype=np.float32)
    return torch.from_numpy(((cropped - mean) / std).transpose(2, 0, 1).copy())


@pytest.mark.parametrize(
    ("size", "fmt"),
    [
        ((640, 480), "JPEG"),
        ((300, 517), "PNG"),
        ((100, 90), "WEBP"),
        ((224, 224), "BMP"),
        ((1001, 224), "PNG"),
        ((37, 300), "BMP"),
    ],
)
def test_image_rule_on_new_sizes_and_formats(size, fmt):
    image = gradient(*size)
    data = encode(image, fmt, **({"lossless": True} if fmt == "WEBP" else {}))
    decoded = Image.open(io.BytesIO(data)).convert("RGB")
    out = load_image(data)
    assert out.shape == (3, 224, 224) and out.dtype == torch.float32
    torch.testing.assert_close(out, by_hand(decoded), atol=1e-5, rtol=0)


def test_alpha_is_dropped_not_composited():
    rgba = gradient(320, 240, "RGBA")
    pixels = np.asarray(rgba).copy()
    pixels[..., 3] = 0  # fully transparent: compositing would turn it all black or white
    transparent = Image.fromarray(pixels, "RGBA")
    torch.testing.assert_close(
        load_image(encode(transparent, "PNG")), load_image(encode(rgba.convert("RGB"), "PNG"))
    )


def test_gif_uses_its_first_frame():
    red = Image.new("RGB", (300, 300), (255, 0, 0))
    blue = Image.new("RGB", (300, 300), (0, 0, 255))
    buffer = io.BytesIO()
    red.save(buffer, format="GIF", save_all=True, append_images=[blue], duration=100)
    out = load_image(buffer.getvalue())
    expected_red = (1.0 - CLIP_MEAN[0]) / CLIP_STD[0]
    assert out[0].mean().item() == pytest.approx(expected_red, abs=1e-2)


def test_grayscale_image_becomes_three_equal_channels():
    out = load_image(encode(gradient(256, 256, "L"), "PNG"))
    raw = out * torch.tensor(CLIP_STD)[:, None, None] + torch.tensor(CLIP_MEAN)[:, None, None]
    torch.testing.assert_close(raw[0], raw[1], atol=1e-5, rtol=0)


@pytest.mark.parametrize("loader", [load_depth, load_thermal])
def test_eight_bit_maps_follow_the_single_channel_rule(loader):
    image = gradient(400, 260, "L")
    out = loader(encode(image, "PNG"))
    assert out.shape == (1, 224, 224)
    torch.testing.assert_close(out, by_hand(image, channels=1), atol=1e-5, rtol=0)


def test_colour_depth_map_is_reduced_to_luma():
    image = gradient(300, 300)
    torch.testing.assert_close(
        load_depth(encode(image, "PNG")), by_hand(image.convert("L"), channels=1), atol=1e-5, rtol=0
    )


def sixteen_bit_png(values: np.ndarray) -> bytes:
    return encode(Image.fromarray(values.astype(np.uint16)), "PNG")


def test_sixteen_bit_depth_becomes_disparity():
    depth_mm = np.full((224, 224), 4000, dtype=np.uint16)
    depth_mm[:, :112] = 1000  # left half four times nearer
    depth_mm[0, 0] = 0  # no measurement
    out = load_depth(sixteen_bit_png(depth_mm))
    pixels = (out[0] * CLIP_STD[0] + CLIP_MEAN[0]) * 255
    assert pixels[100, 50].item() == pytest.approx(255, abs=0.5)  # nearest → brightest
    assert pixels[100, 170].item() == pytest.approx(255 / 4, abs=1.0)
    assert pixels[0, 0].item() == pytest.approx(0, abs=1.0)


def test_sixteen_bit_thermal_is_scaled_min_to_max():
    counts = np.tile(np.linspace(20000, 30000, 224), (224, 1))
    out = load_thermal(sixteen_bit_png(counts))
    pixels = (out[0] * CLIP_STD[0] + CLIP_MEAN[0]) * 255
    assert pixels[:, 0].mean().item() == pytest.approx(0, abs=1.5)
    assert pixels[:, -1].mean().item() == pytest.approx(255, abs=1.5)


def test_sixteen_bit_depth_without_any_valid_pixel_is_an_error():
    with pytest.raises(MediaError, match="no valid"):
        load_depth(sixteen_bit_png(np.zeros((64, 64))))


def test_fixture_images_decode_from_bytes():
    for name in ["image_rgb.jpg", "image_rgba.png", "image_gray.png"]:
        assert load_image((INPUTS / name).read_bytes()).shape == (3, 224, 224)


# -- fast decode (IB_IMAGE_DECODE=fast) ----------------------------------------------------------

FAST_MEAN_BOUND = 0.02  # mean |Δ| in normalised units, fast against exact
FAST_RMS_BOUND = 0.03


def photo_jpeg(width: int, height: int, mode: str = "RGB", seed: int = 0) -> bytes:
    """A JPEG like a photo: smooth colour fields under sensor-like noise, quality 90."""
    rng = np.random.default_rng(seed)
    ys = np.linspace(0, 1, height)[:, None]
    xs = np.linspace(0, 1, width)[None, :]
    planes = [
        127.5
        + 100 * np.sin(2 * np.pi * (rng.uniform(0.5, 4) * xs + rng.uniform(0.5, 4) * ys))
        + rng.normal(0, 10, (height, width))
        for _ in range(3 if mode == "RGB" else 1)
    ]
    array = np.clip(np.stack(planes, axis=-1), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(array if mode == "RGB" else array[..., 0], mode).save(
        buffer, "JPEG", quality=90
    )
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("data", "what"),
    [
        (photo_jpeg(1190, 893), "a JPEG whose short side is under 4x224"),
        (photo_jpeg(640, 480), "a small JPEG"),
    ],
)
def test_fast_decode_leaves_images_too_small_to_reduce_bit_identical(data, what):
    assert open_image(data, reduce_to=224).size == open_image(data).size, what
    assert torch.equal(load_image(data, 224, "fast"), load_image(data, 224, "exact")), what


def test_fast_decode_leaves_other_formats_bit_identical():
    image = Image.open(io.BytesIO(photo_jpeg(2000, 1500))).convert("RGB")
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    png = buffer.getvalue()
    assert torch.equal(load_image(png, 224, "fast"), load_image(png, 224, "exact"))


@pytest.mark.parametrize(
    ("width", "height", "decoded"),
    [(4000, 3000, (1000, 750)), (3000, 4000, (750, 1000)), (2592, 1944, (648, 486))],
)
def test_fast_decode_of_a_large_photo_is_within_the_documented_bound(width, height, decoded):
    data = photo_jpeg(width, height)
    assert open_image(data, reduce_to=224).size == decoded  # smallest scale >= 2 x 224
    exact, fast = load_image(data, 224, "exact"), load_image(data, 224, "fast")
    difference = fast - exact
    assert difference.abs().mean().item() < FAST_MEAN_BOUND
    assert difference.pow(2).mean().sqrt().item() < FAST_RMS_BOUND


@pytest.mark.parametrize("loader", [load_depth, load_thermal])
def test_fast_decode_applies_to_large_depth_and_thermal_jpegs(loader):
    data = photo_jpeg(4000, 3000, mode="L", seed=1)
    exact, fast = loader(data, 224, "exact"), loader(data, 224, "fast")
    assert not torch.equal(exact, fast)  # reduced: it did take the fast path
    assert (fast - exact).abs().mean().item() < FAST_MEAN_BOUND


def test_an_unknown_decode_mode_is_refused():
    with pytest.raises(ValueError, match="exact, fast"):
        load_image(photo_jpeg(64, 48), 224, "quick")
