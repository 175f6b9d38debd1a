"""Synthetic, deterministic inputs for every modality, as Weaviate would send them.

A benchmark needs payloads that cost the server what real data costs (a JPEG
with noise decodes like a photo, a video must be demuxed and decoded), that
differ from one another (so no cache can answer), and that are the same on
every run (so two servers, or two runs, see the same bytes). The generators
take a numpy ``Generator`` and keyword sizes, so other benchmarks can reuse
them at other sizes; :func:`make_pool` and :func:`request_body` build the
``/vectorize`` bodies the load generator sends.

Modalities are given as a :class:`~ib_vectorizer.modalities.Modality` or any
name :meth:`Modality.parse` accepts (``image``, ``vision``, ``texts``, ...).
"""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from ..modalities import Modality
from ..serving.protocol import WIRE_NAME

if TYPE_CHECKING:
    import numpy as np

DEFAULT_IMAGE_SIZE = (640, 480)
POOL_SIZE = 8  # distinct payloads per modality, so a server cannot answer from a cache
IMU_HEADER = "gyro_x,gyro_y,gyro_z,accl_x,accl_y,accl_z"


class PayloadError(RuntimeError):
    """A payload cannot be made on this machine (e.g. no video encoder)."""


def image_payload(
    rng: np.random.Generator,
    size: tuple[int, int] = DEFAULT_IMAGE_SIZE,
    noise: float = 20.0,
    quality: int = 90,
) -> bytes:
    """A JPEG (``size`` is width, height): a coloured gradient under noise, as costly as a photo.

    ``noise`` is the pixel noise's standard deviation; less noise, smaller files.
    """
    import numpy as np
    from PIL import Image

    width, height = size
    ys = np.linspace(0.0, 1.0, height)[:, None]
    xs = np.linspace(0.0, 1.0, width)[None, :]
    channels = []
    for _ in range(3):
        a, b, phase = rng.uniform(0.5, 4.0), rng.uniform(0.5, 4.0), rng.uniform(0, 2 * np.pi)
        channels.append(127.5 + 100.0 * np.sin(2 * np.pi * (a * xs + b * ys) + phase))
    image = np.stack(channels, axis=-1) + rng.normal(0.0, noise, (height, width, 3))
    buffer = io.BytesIO()
    pixels = np.clip(image, 0, 255).astype(np.uint8)
    Image.fromarray(pixels, "RGB").save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


_SUBJECTS = ("a dog", "two cats", "an old man", "a red car", "a small bird", "the crowd", "a child")
_VERBS = ("runs across", "sleeps on", "looks at", "waits near", "jumps over", "sings in")
_PLACES = ("the beach", "a busy street", "the kitchen table", "a snowy field", "the stage")
_TIMES = ("at sunset", "in the rain", "at night", "on a sunny morning", "during a storm")


def text_payload(rng: np.random.Generator) -> str:
    """A short caption, like the text properties Weaviate vectorises."""
    words = (_SUBJECTS, _VERBS, _PLACES, _TIMES)
    return " ".join(str(choices[rng.integers(len(choices))]) for choices in words).capitalize()


def audio_payload(rng: np.random.Generator, seconds: float = 5.0, rate: int = 16_000) -> bytes:
    """A mono 16-bit WAV (5 s at 16 kHz by default): a few tones and some noise."""
    import wave

    import numpy as np

    t = np.arange(round(seconds * rate)) / rate
    sound = sum(0.2 * np.sin(2 * np.pi * rng.uniform(100, 3000) * t) for _ in range(3))
    sound = sound + rng.normal(0.0, 0.05, t.shape)
    samples = np.clip(np.round(sound * 32767), -32768, 32767).astype("<i2")
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(samples.tobytes())
    return buffer.getvalue()


def video_codec() -> str:
    """The first of H.264 and MPEG-4 part 2 that this PyAV build can encode."""
    import av

    for name in ("libx264", "h264", "mpeg4"):
        try:
            av.codec.Codec(name, "w")
        except Exception:  # PyAV raises UnknownCodecError or ValueError, by version
            continue
        return name
    raise PayloadError("PyAV can encode neither H.264 nor MPEG-4; cannot make video payloads")


def video_payload(
    rng: np.random.Generator,
    seconds: int = 3,
    fps: int = 30,
    size: tuple[int, int] = (320, 240),
    bit_rate: int | None = None,
) -> bytes:
    """An MP4 (3 s of 320x240 by default): a scrolling gradient with a square moving over it.

    ``bit_rate`` (bits/s) caps the encoder's rate, for long videos that must stay small.
    """
    import av
    import numpy as np

    width, height = size
    codec = video_codec()
    # x264's macroblock tree made this build's output differ run to run: off, for seeded bytes.
    options = {"preset": "veryfast", "threads": "1", "x264-params": "mbtree=0"}
    if codec == "mpeg4":
        options = {"qscale": "3", "threads": "1"}
    xs = np.arange(width)[None, :]
    ys = np.arange(height)[:, None]
    colour = rng.integers(40, 220, 3)
    speed = rng.uniform(1.0, 6.0)
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="mp4") as out:
        stream = out.add_stream(codec, rate=fps, options=options)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        if bit_rate is not None:
            stream.bit_rate = bit_rate
        for index in range(seconds * fps):
            shift = speed * index
            plane = (xs + ys + shift) % 256
            image = np.stack([plane, (plane + 85) % 256, (plane + 170) % 256], axis=-1)
            x0 = int(shift * 2) % (width - 48)
            image[40:88, x0 : x0 + 48] = colour
            frame = av.VideoFrame.from_ndarray(image.astype(np.uint8), format="rgb24")
            frame.pts = index
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return buffer.getvalue()


def grayscale_payload(rng: np.random.Generator, size: tuple[int, int] = (320, 240)) -> bytes:
    """An 8-bit grayscale PNG (320x240 by default), smooth like a depth or thermal map, noisy."""
    import numpy as np
    from PIL import Image

    width, height = size
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float64)
    cx, cy = rng.uniform(0, width), rng.uniform(0, height)
    radius = np.hypot(xs - cx, ys - cy) / np.hypot(width, height)
    image = 255.0 * (1.0 - radius) + rng.normal(0.0, 6.0, (height, width))
    buffer = io.BytesIO()
    Image.fromarray(np.clip(image, 0, 255).astype(np.uint8), "L").save(buffer, "PNG")
    return buffer.getvalue()


def imu_payload(rng: np.random.Generator, rows: int = 2000) -> bytes:
    """A CSV of six IMU channels (2000 rows: 5 s at 400 Hz by default), with Ego4D's header."""
    import numpy as np

    t = np.arange(rows) / 400.0
    gyro = [0.5 * np.sin(2 * np.pi * rng.uniform(0.2, 3.0) * t) for _ in range(3)]
    accl = [np.sin(2 * np.pi * rng.uniform(0.2, 3.0) * t) for _ in range(3)]
    accl[2] = accl[2] + 9.81
    table = np.stack(gyro + accl, axis=1) + rng.normal(0.0, 0.02, (rows, 6))
    buffer = io.StringIO()
    np.savetxt(buffer, table, fmt="%.5f", delimiter=",", header=IMU_HEADER, comments="")
    return buffer.getvalue().encode("ascii")


GENERATORS: dict[Modality, Callable[[Any], bytes | str]] = {
    Modality.VISION: image_payload,
    Modality.TEXT: text_payload,
    Modality.AUDIO: audio_payload,
    Modality.VIDEO: video_payload,
    Modality.DEPTH: grayscale_payload,
    Modality.THERMAL: grayscale_payload,
    Modality.IMU: imu_payload,
}


def make_pool(
    kind: Modality | str,
    count: int = POOL_SIZE,
    seed: int = 0,
    image_size: tuple[int, int] = DEFAULT_IMAGE_SIZE,
) -> list[bytes | str]:
    """``count`` distinct, deterministic payloads of one modality (texts as str, media as bytes).

    ``image_size`` (width, height) is the size of image payloads.
    """
    import numpy as np

    modality = Modality.parse(kind)
    rng = np.random.default_rng([seed, list(Modality).index(modality)])
    if modality is Modality.VISION:
        pool = [image_payload(rng, size=image_size) for _ in range(count)]
    else:
        pool = [GENERATORS[modality](rng) for _ in range(count)]
    if len(set(pool)) < count:  # a short text list could repeat; vary it rather than cache-hit
        pool = [item if isinstance(item, bytes) else f"{item} ({i})" for i, item in enumerate(pool)]
    return pool


def request_body(kind: Modality | str, item: bytes | str) -> bytes:
    """The JSON body of a one-item ``/vectorize`` request, encoded once up front."""
    value = item if isinstance(item, str) else base64.b64encode(item).decode("ascii")
    return json.dumps({WIRE_NAME[Modality.parse(kind)]: [value]}).encode("utf-8")


def make_bodies(
    kinds: Iterable[str], seed: int, image_size: tuple[int, int] = DEFAULT_IMAGE_SIZE
) -> dict[str, list[bytes]]:
    """A pool of request bodies per modality, keyed by the names given."""
    pools = {kind: make_pool(kind, seed=seed, image_size=image_size) for kind in kinds}
    return {kind: [request_body(kind, item) for item in pool] for kind, pool in pools.items()}
