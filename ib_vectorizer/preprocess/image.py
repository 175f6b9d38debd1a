"""Images → CLIP-normalised (3, S, S) tensors, S = ``image_size`` (224), as the reference.

Decode with Pillow (JPEG, PNG, WebP, BMP, GIF's first frame, ...), convert to
RGB (alpha is dropped, not composited, as in training), resize the short side
to S with antialiased bicubic, centre-crop S, scale to [0, 1], normalise.
"""

from __future__ import annotations

import io
import warnings

import torch
from PIL import Image
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF

from ..errors import MediaError
from .config import IMAGEBIND_HUGE
from .constants import CLIP_MEAN, CLIP_STD

# Pillow's decompression-bomb guard, made an error rather than a warning:
# nothing legitimate sent for embedding has more pixels than this.
MAX_IMAGE_PIXELS = 178_956_970


def open_image(data: bytes, what: str = "image") -> Image.Image:
    """Decode fully (so truncation shows now), or raise MediaError saying why."""
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


def resize_and_crop(image: Image.Image, size: int = IMAGEBIND_HUGE.image_size) -> Image.Image:
    """Short side to ``size`` (bicubic, antialiased), then the centre ``size``×``size``."""
    image = TF.resize(image, size, interpolation=InterpolationMode.BICUBIC)
    return TF.center_crop(image, size)


def load_image(data: bytes, size: int = IMAGEBIND_HUGE.image_size) -> torch.Tensor:
    """Encoded image bytes → float32 (3, size, size)."""
    image = open_image(data).convert("RGB")
    tensor = TF.to_tensor(resize_and_crop(image, size))
    return TF.normalize(tensor, CLIP_MEAN, CLIP_STD)
