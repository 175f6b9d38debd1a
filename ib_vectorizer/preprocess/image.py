"""Images → CLIP-normalised (3, S, S) tensors, S = ``image_size`` (224), as the reference.

Decode with Pillow (JPEG, PNG, WebP, BMP, GIF's first frame, ...), convert to
RGB (alpha is dropped, not composited, as in training), resize the short side
to S with antialiased bicubic, centre-crop S, scale to [0, 1], normalise.

Two ways to decode (``IB_IMAGE_DECODE``):

- ``exact``: every pixel of the file is decoded, as the reference does.
- ``fast``: a JPEG is decoded in the DCT domain straight to the smallest of
  1/2, 1/4 or 1/8 of its size whose short side is still at least 2·S
  (Pillow's ``draft``), then the same bicubic rule applies. A 12-megapixel
  photo decodes 8× fewer pixels. Images too small to reduce, and other
  formats, are decoded exactly, so they give bit-identical input.

Vector images (SVG, SVGZ, PDF, EPS, WMF/EMF) are refused, told apart by their
first bytes: their pixels depend on a rasteriser and a resolution the model
knows nothing of, so the MediaError says to rasterise them first.
"""

from __future__ import annotations

import io
import warnings
import zlib
from collections.abc import Callable

import torch
from PIL import Image
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF

from ..choices import IMAGE_DECODE_MODES
from ..errors import MediaError
from .config import IMAGEBIND_HUGE
from .constants import CLIP_MEAN, CLIP_STD
from .limits import (
    DECODER_SCRATCH,
    MAX_IMAGE_PIXELS,
    ItemCost,
    check_picture_shape,
    resized_shape,
)

# Bytes per pixel as Pillow stores a decoded image: one for 1-bit, grey and palette
# images, two for 16-bit grey, four for everything else (RGB is kept as RGBX).
_NARROW_MODES = {"1": 1, "L": 1, "P": 1}
# What decoders hold besides the image, per pixel (measured with Pillow 12): libwebp's
# RGBA frame and its copy; libjpeg's coefficients of a progressive JPEG (4:4:4 at most).
_DECODER_BYTES_PER_PIXEL = {"WEBP": 13, "JPEG progressive": 6}
# Vector formats Pillow identifies but cannot rasterise without Ghostscript or Windows.
_VECTOR_FORMATS = {"EPS": "EPS", "WMF": "WMF/EMF"}
_SNIFF_BYTES = 4096  # how much of the start of a file tells a vector image apart


def vector_format(data: bytes) -> str | None:
    """``SVG``, ``SVGZ``, ``PDF`` or ``EPS`` when ``data`` starts like that vector format.

    Read from the first bytes only (a gzip stream: its first few KiB, inflated
    no further), so a vector image is named before any decoder sees it.
    """
    head = data[:_SNIFF_BYTES]
    if head.startswith(b"\x1f\x8b"):
        try:
            inflated = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(head, _SNIFF_BYTES)
        except zlib.error:
            return None
        return "SVGZ" if _looks_like_svg(inflated) else None
    if _looks_like_svg(head):
        return "SVG"
    if head.startswith(b"%PDF-"):
        return "PDF"
    if head.startswith((b"%!PS", b"\xc5\xd0\xd3\xc6")):  # PostScript, DOS EPS binary
        return "EPS"
    return None


def _looks_like_svg(head: bytes) -> bool:
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n")  # a UTF-8 BOM, blank lines
    if text.startswith(b"<svg"):
        return True
    # An XML declaration, an SVG doctype or a comment first, then the <svg> element.
    return text.startswith((b"<?xml", b"<!DOCTYPE svg", b"<!--")) and b"<svg" in text


def vector_image_error(kind: str) -> MediaError:
    """The error for a vector image: what it is, and what to do."""
    return MediaError(f"a vector image ({kind}): rasterise it first (e.g. to PNG)")


def stored_bytes_per_pixel(mode: str) -> int:
    """What one pixel of a decoded image of ``mode`` takes in Pillow's memory."""
    if mode.startswith("I;16"):
        return 2
    return _NARROW_MODES.get(mode, 4)


def read_header(data: bytes, what: str = "image") -> Image.Image:
    """The image opened lazily (only its header read), its shape within the limits.

    MediaError says why not: empty, a vector image (SVG, PDF, EPS, ...: they
    must be rasterised first), not an image, too many pixels, too long.
    """
    if not data:
        raise MediaError(f"{what} file is empty (0 bytes)")
    vector = vector_format(data)
    if vector is not None:
        raise vector_image_error(vector)
    try:
        with warnings.catch_warnings():
            # Pillow warns past half its bomb limit; the limits are checked below instead.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
    except Image.UnidentifiedImageError:
        raise MediaError(f"not a decodable {what} file (unknown format)") from None
    except Image.DecompressionBombError:
        raise MediaError(f"{what} has more than {MAX_IMAGE_PIXELS:,} pixels, the limit") from None
    except (OSError, SyntaxError, ValueError, EOFError) as err:
        raise MediaError(f"not a decodable {what} file ({err})") from None
    if image.format in _VECTOR_FORMATS:
        raise vector_image_error(_VECTOR_FORMATS[image.format])
    check_picture_shape(image.width, image.height, what, MAX_IMAGE_PIXELS)
    return image


def open_image(data: bytes, what: str = "image", reduce_to: int | None = None) -> Image.Image:
    """Decode fully (so truncation shows now), or raise MediaError saying why.

    ``reduce_to``: let a JPEG decode at a reduced scale whose short side is at
    least twice this (the ``fast`` mode); None decodes every pixel.
    """
    image = read_header(data, what)
    try:
        if reduce_to is not None and image.format == "JPEG":
            reduce_jpeg_decode(image, 2 * reduce_to)
        image.load()
    except (OSError, SyntaxError, ValueError, EOFError) as err:
        raise MediaError(f"not a decodable {what} file ({err})") from None
    return image


def picture_cost(
    data: bytes,
    size: int,
    decode: str,
    what: str,
    convert_bytes_per_pixel: Callable[[str], int],
) -> ItemCost:
    """What decoding a picture to ``size`` takes, from its header.

    ``convert_bytes_per_pixel(mode)``: what turning a decoded pixel of ``mode``
    into the loader's input mode adds (0 when no conversion is needed).
    """
    image = read_header(data, what)
    width, height = image.size
    if reduce_target(decode, size) is not None and image.format == "JPEG":
        width, height = jpeg_reduced_size(width, height, 2 * size)
    decoder = image.format or ""
    if decoder == "JPEG" and image.info.get("progressive"):
        decoder = "JPEG progressive"
    per_pixel = (
        stored_bytes_per_pixel(image.mode)
        + convert_bytes_per_pixel(image.mode)
        + _DECODER_BYTES_PER_PIXEL.get(decoder, 0)
    )
    resized_width, resized_height = resized_shape(width, height, size)
    # Pillow resizes horizontally first (every decoded row), then vertically, in RGBX.
    resizing = 4 * (resized_width * height + resized_width * resized_height)
    kind = f"{image.format} " if image.format else ""
    return ItemCost(
        width * height * per_pixel + resizing + DECODER_SCRATCH,
        f"a {image.width}x{image.height} {image.mode} {kind}{what}",
    )


def reduce_jpeg_decode(image: Image.Image, min_short_side: int) -> None:
    """Ask libjpeg for the smallest DCT scaling whose short side is at least ``min_short_side``.

    Pillow picks the largest of the 1/1, 1/2, 1/4 and 1/8 scales that keeps the
    image at least the size asked for, so the request is the image scaled to
    that short side (rounded up).
    """
    width, height = image.size
    short = min(width, height)
    if short < 2 * min_short_side:  # no scale keeps it large enough: decode every pixel
        return
    wanted = (-(-width * min_short_side // short), -(-height * min_short_side // short))
    image.draft(image.mode, wanted)


def jpeg_reduced_size(width: int, height: int, min_short_side: int) -> tuple[int, int]:
    """The size :func:`reduce_jpeg_decode` makes libjpeg decode a JPEG of this size at."""
    scale = 1
    while scale < 8 and min(width, height) // (2 * scale) >= min_short_side:
        scale *= 2
    return -(-width // scale), -(-height // scale)


def resize_and_crop(image: Image.Image, size: int = IMAGEBIND_HUGE.image_size) -> Image.Image:
    """Short side to ``size`` (bicubic, antialiased), then the centre ``size``×``size``."""
    image = TF.resize(image, size, interpolation=InterpolationMode.BICUBIC)
    return TF.center_crop(image, size)


def image_cost(
    data: bytes, size: int = IMAGEBIND_HUGE.image_size, decode: str = "exact"
) -> ItemCost:
    """What :func:`load_image` will take to decode ``data``, from its header."""
    return picture_cost(data, size, decode, "image", _to_rgb_bytes_per_pixel)


def _to_rgb_bytes_per_pixel(mode: str) -> int:
    """What ``convert("RGB")`` adds per pixel: the RGB image (and, from 32-bit, an 8-bit one)."""
    if mode == "RGB":
        return 0
    return 5 if mode in ("I", "F") else 4


def load_image(
    data: bytes, size: int = IMAGEBIND_HUGE.image_size, decode: str = "exact"
) -> torch.Tensor:
    """Encoded image bytes → float32 (3, size, size); ``decode`` is exact or fast."""
    image = open_image(data, reduce_to=reduce_target(decode, size))
    if image.mode != "RGB":  # convert() of an RGB image would copy it
        image = image.convert("RGB")
    tensor = TF.to_tensor(resize_and_crop(image, size))
    return TF.normalize(tensor, CLIP_MEAN, CLIP_STD)


def reduce_target(decode: str, size: int) -> int | None:
    """What :func:`open_image` may reduce a JPEG towards in mode ``decode``."""
    if decode not in IMAGE_DECODE_MODES:
        raise ValueError(
            f"image decode must be one of {', '.join(IMAGE_DECODE_MODES)}, not {decode!r}"
        )
    return size if decode == "fast" else None
