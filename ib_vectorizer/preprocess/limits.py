"""What one item may cost to decode, judged from its header before anything is decoded.

Every item is hostile until its header says otherwise: a 138-byte PNG can
claim 20000×1 pixels (224 rows tall after resizing, that is 4.5 million
columns), a 32 KB WAV a sample rate whose resampling filter takes 4 GB.
Each loader reads its item's header first (``*_cost`` beside each loader),
refuses what breaks a limit here, with the limit named, and estimates the
peak memory decoding will take as an :class:`ItemCost`, so that
:class:`~ib_vectorizer.preprocess.Preprocessor` can refuse an item whose
decoding needs more than its limit and a server can budget for the rest.
While decoding, the loaders check what the header promised (frame sizes,
sample counts) and stop at a deadline.

The estimates are peak bytes above what the process held before, measured
per format on real decodes (``docs/limits-and-hostile-input.md``); they err
on the high side.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from ..errors import DeadlinePassed, MediaError
from ..options import ModelOptions

MiB = 1 << 20

# The most memory one item's decoding may take, by default (IB_MAX_ITEM_MB): a 12 MP phone
# photo needs about 50 MiB, 10 minutes of 48 kHz stereo about 500 MiB, 4K video 300 MiB.
MAX_ITEM_BYTES = ModelOptions.max_item_mb * MiB

# Pictures (images, depth and thermal maps, video frames) are resized to a short side of
# 224: the long side grows by 224 / short side. No photo, panorama or scrolled screenshot
# is longer than this many times its width; beyond it, resizing is what costs.
MAX_ASPECT_RATIO = 100.0
# Pillow's own decompression-bomb limit (twice its warning threshold).
MAX_IMAGE_PIXELS = 178_956_970
# What a decoder holds whatever the item's size (its context, its buffers), measured.
DECODER_SCRATCH = 16 * MiB


@dataclass(frozen=True)
class ItemCost:
    """The peak memory decoding an item will take, and what the header said it is."""

    bytes: int
    what: str  # "a 4000x3000 RGB JPEG image", for messages

    def check(self, limit: int) -> None:
        """MediaError when decoding needs more than ``limit`` bytes."""
        if self.bytes > limit:
            raise MediaError(
                f"{self.what} needs about {_mib(self.bytes)} to decode; "
                f"the limit is {_mib(limit)} per item"
            )


@dataclass(frozen=True)
class DecodeLimits:
    """What decoding one item may still take, checked by the loaders as they go.

    ``max_bytes``: the memory the item was allowed from its header; a stream that
    decodes to more than its header promised is stopped there. ``deadline``: a
    ``time.monotonic()`` after which nobody waits for the result.
    """

    max_bytes: int | None = None
    deadline: float | None = None

    def check_deadline(self, what: str) -> None:
        if self.deadline is not None and time.monotonic() > self.deadline:
            raise DeadlinePassed(f"{what} decoding stopped: its request stopped waiting")

    def check_bytes(self, count: float, what: str) -> None:
        if self.max_bytes is not None and count > self.max_bytes:
            raise MediaError(
                f"{what} decodes to more than its header says: over {_mib(self.max_bytes)}, "
                "the limit per item"
            )


NO_LIMITS = DecodeLimits()


def check_picture_shape(width: int, height: int, what: str, max_pixels: int) -> None:
    """MediaError for a picture with no pixels, too many, or too long for its width."""
    if width < 1 or height < 1:
        raise MediaError(f"{what} is {width}x{height} pixels: it has no pixels")
    if width * height > max_pixels:
        raise MediaError(f"{what} is {width}x{height} pixels; the limit is {max_pixels:,} pixels")
    ratio = max(width, height) / min(width, height)
    if ratio > MAX_ASPECT_RATIO:
        raise MediaError(
            f"{what} is {width}x{height} pixels, {ratio:.0f} times longer than wide; "
            f"the limit is {MAX_ASPECT_RATIO:g}"
        )


def resized_shape(width: int, height: int, short_side: int) -> tuple[int, int]:
    """(width, height) with the short side scaled to ``short_side`` (long side rounded down)."""
    if width <= height:
        return short_side, math.floor(height * short_side / width)
    return math.floor(width * short_side / height), short_side


def _mib(count: int) -> str:
    return f"{count / MiB:,.0f} MiB"
