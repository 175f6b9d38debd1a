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
"""

from __future__ import annotations

import io
import warnings

import torch
from PIL import Image
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF

from ..errors import MediaError
from ..options import IMAGE_DECODE_MODES
from .config import IMAGEBIND_HUGE
from .constants import CLIP_MEAN, CLIP_STD

# Pillow's decompression-bomb guard, made an error rather than a warning:
# nothing legitimate sent for embedding has more pixels than this.
MAX_IMAGE_PIXELS = 178_956_970


def open_image(data: bytes, what: str = "image", reduce_to: int | None = None) -> Image.Image:
    """Decode fully (so truncation shows now), or raise MediaError saying why.

    ``reduce_to``: let a JPEG decode at a reduced scale whose short side is at
    least twice this (the ``fast`` mode); None decodes every pixel.
    """
    if not data:
        raise MediaError(f"{what} file is empty (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            if image.width * image.height > MAX_IMAGE_PIXELS:
                raise MediaError(
                    f"{what} is {image.width}x{image.height} pixels; the limit is "
                    f"{MAX_IMAGE_PIXELS} pixels"
                )
            if reduce_to is not None and image.format == "JPEG":
                reduce_jpeg_decode(image, 2 * reduce_to)
            image.load()
    except MediaError:
        raise
    except Image.UnidentifiedImageError:
        raise MediaError(f"not a decodable {what} file (unknown format)") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise MediaError(f"{what} is too large to decode: {err}") from None
    except (OSError, SyntaxError, ValueError, EOFError) as err:
        raise MediaError(f"not a decodable {what} file ({err})") from None
    return image


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


def resize_and_crop(image: Image.Image, size: int = IMAGEBIND_HUGE.image_size) -> Image.Image:
    """Short side to ``size`` (bicubic, antialiased), then the centre ``size``×``size``."""
    image = TF.resize(image, size, interpolation=InterpolationMode.BICUBIC)
    return TF.center_crop(image, size)


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
