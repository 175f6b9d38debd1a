"""Hostile media, made in memory: what an attacker uploads to the server or drops in a bucket.

- Shape bombs: tiny files whose pictures are far longer than wide (resizing the
  short side to 224 is what would cost).
- Memory bombs: headers that claim a huge 16-bit map, a huge array.
- Sample-rate bombs: WAVs at rates that share little with 16 kHz.
- Non-finite values: float WAVs holding NaN, infinity or 3e38; IMU values that
  overflow float32.
- Mutants: seeded random damage to the fixture's real files of every modality.

Used by the hostile-input tests and by ``python -m tests.fuzz``.
"""

from __future__ import annotations

import io
import random
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

import av
import numpy as np
from PIL import Image

from .fixture_data import INPUTS
from .media import encode_video, indexed_frames, tone

# -- pictures ------------------------------------------------------------------------------------


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return (
        struct.pack(">I", len(payload))
        + kind
        + payload
        + struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF)
    )


def png(width: int, height: int, bits: int = 8, rows: int | None = None) -> bytes:
    """A grey PNG of ``width`` × ``height`` zero pixels; with ``rows``, only that many rows
    of pixel data follow the header (a file cut short, or a bomb that only claims)."""
    header = struct.pack(">IIBBBBB", width, height, bits, 0, 0, 0, 0)
    row = b"\x00" + bytes(width * bits // 8)  # filter type 0, then the pixels
    stream = zlib.compressobj(9)
    data = b"".join(stream.compress(row) for _ in range(height if rows is None else rows))
    data += stream.flush()
    signature = b"\x89PNG\r\n\x1a\n"
    idat = _png_chunk(b"IDAT", data)
    return signature + _png_chunk(b"IHDR", header) + idat + _png_chunk(b"IEND", b"")


def pillow_image(width: int, height: int, mode: str, fmt: str) -> bytes:
    """A blank image encoded by Pillow (GIF, 1-bit TIFF, ...)."""
    out = io.BytesIO()
    Image.new(mode, (width, height)).save(out, format=fmt)
    return out.getvalue()


# -- video ---------------------------------------------------------------------------------------


def video_of_shape(width: int, height: int, codec: str, container: str = "avi") -> bytes:
    """Two tiny frames of ``width`` × ``height`` in ``codec`` (mjpeg, rawvideo)."""
    pix_fmt = {"mjpeg": "yuvj420p", "rawvideo": "gray"}[codec]
    out = io.BytesIO()
    with av.open(out, "w", format=container) as muxer:
        stream = muxer.add_stream(codec, rate=1)
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        for index in range(2):
            frame = av.VideoFrame.from_ndarray(np.zeros((height, width), np.uint8), "gray")
            frame.pts = index
            for packet in stream.encode(frame.reformat(format=pix_fmt)):
                muxer.mux(packet)
        for packet in stream.encode(None):
            muxer.mux(packet)
    return out.getvalue()


def unknown_codec_video() -> bytes:
    """An MP4 whose video stream names a codec no decoder knows."""
    data = encode_video(indexed_frames(4, 64, 48), fps=4)
    entry = data.index(b"avc1", 64)  # the sample description's, after the file type's brand
    return data[:entry] + b"zq9x" + data[entry + 4 :]


# -- audio and IMU -------------------------------------------------------------------------------


def wav(samples: np.ndarray, rate: int) -> bytes:
    """A WAV of (channels, n) samples: 32-bit float for floats (any value), 16-bit PCM else."""
    channels = samples.shape[0]
    if samples.dtype.kind == "f":
        tag, payload = 3, samples.T.astype("<f4").tobytes()
    else:
        tag, payload = 1, samples.T.astype("<i2").tobytes()
    width = 4 if tag == 3 else 2
    fmt = struct.pack(
        "<HHIIHH", tag, channels, rate, rate * channels * width, channels * width, 8 * width
    )
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt
    body += b"data" + struct.pack("<I", len(payload)) + payload
    return b"RIFF" + struct.pack("<I", len(body)) + body


def tone_wav(rate: int, seconds: float = 2.0) -> bytes:
    """A 440 Hz tone at ``rate`` Hz, 16-bit mono."""
    return wav(np.round(tone([440.0], seconds, rate) * 32767).astype(np.int16), rate)


def float_wav_holding(value: float, rate: int = 16_000) -> bytes:
    """One second of a float WAV, a tone with ``value`` in the middle."""
    samples = tone([440.0], 1.0, rate).astype(np.float32)
    samples[0, rate // 2] = value
    return wav(samples, rate)


def imu_csv_holding(value: str) -> bytes:
    rows = ["gyro_x,gyro_y,gyro_z,accl_x,accl_y,accl_z"] + ["0.1,0.2,0.3,0.4,0.5,0.6"] * 50
    rows[20] = f"0.1,0.2,0.3,0.4,0.5,{value}"
    return "\n".join(rows).encode()


def npy_claiming(shape: tuple[int, ...]) -> bytes:
    """An .npy header that claims ``shape`` float64, followed by almost nothing."""
    header = f"{{'descr': '<f8', 'fortran_order': False, 'shape': {shape}, }}"
    header += " " * (63 - (10 + len(header)) % 64) + "\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header.encode() + bytes(64)


# -- the catalogue -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Bomb:
    """A hostile item, the wire key it goes under, and what the answer must say."""

    name: str
    key: str  # images, audio, video, depth, thermal, imu
    data: bytes
    refused: str | None  # a piece of the 400's reason; None: it must embed (status 200)


def bombs() -> list[Bomb]:
    """One item of each kind that once cost gigabytes, crashed or gave a NaN vector."""
    return [
        Bomb("png 30000x1", "images", png(30_000, 1), "times longer than wide"),
        Bomb("png 1x60000", "images", png(1, 60_000), "times longer than wide"),
        Bomb("gif 65000x2", "images", pillow_image(65_000, 2, "P", "GIF"), "longer than wide"),
        Bomb("tiff 1-bit 90000x1", "images", pillow_image(90_000, 1, "1", "TIFF"), "longer"),
        Bomb("depth png 1x40000", "depth", png(1, 40_000, bits=16), "times longer than wide"),
        Bomb("thermal png 25000x3", "thermal", png(25_000, 3), "times longer than wide"),
        Bomb("thermal 16-bit 10000x10000", "thermal", png(10_000, 10_000, 16, rows=1), "MiB"),
        Bomb("depth 16-bit 12000x9000", "depth", png(12_000, 9_000, 16, rows=1), "MiB"),
        Bomb("mjpeg avi 20000x2", "video", video_of_shape(20_000, 2, "mjpeg"), "longer"),
        Bomb("raw avi 60000x1", "video", video_of_shape(60_000, 1, "rawvideo"), "longer"),
        Bomb("unknown codec", "video", unknown_codec_video(), "codec"),
        Bomb("wav 16003 Hz", "audio", tone_wav(16_003), None),
        Bomb("wav 48007 Hz", "audio", tone_wav(48_007), None),
        Bomb("wav 999983 Hz", "audio", tone_wav(999_983, seconds=0.5), None),
        Bomb("float wav NaN", "audio", float_wav_holding(float("nan")), "NaN"),
        Bomb("float wav inf", "audio", float_wav_holding(float("inf")), "NaN"),
        Bomb("float wav 3e38", "audio", float_wav_holding(3e38), "NaN"),
        Bomb("imu 1e39", "imu", imu_csv_holding("1e39"), "too large for float32"),
        Bomb("imu nan", "imu", imu_csv_holding("nan"), "NaN"),
        Bomb("npy claiming 6x1e9", "imu", npy_claiming((6, 10**9)), "claims"),
    ]


# -- mutants -------------------------------------------------------------------------------------

# The fixture's real files each modality's mutants start from.
SEEDS = {
    "images": ["image_rgb.jpg", "image_rgba.png", "image_gray.png"],
    "audio": ["tone_16k_mono.wav", "chirp_44k_stereo.wav", "short_8k_mono.wav"],
    "video": ["video_a.mp4"],
    "depth": ["depth_a.png", "depth_b.jpg"],
    "thermal": ["thermal_a.jpg", "thermal_b.png"],
    "imu": ["imu_1500.csv"],
}
_EXTREMES = [0, 1, 2**15, 2**16 - 1, 2**31 - 1, 2**32 - 1, 16_001, 48_001, 65_535, 100_000]


def mutate(data: bytes, rng: random.Random) -> bytes:
    """One random damage: flipped bytes, an extreme number in the header, a cut, a splice."""
    out = bytearray(data)
    kind = rng.randrange(5)
    if kind == 0:  # flip a few bytes anywhere
        for _ in range(rng.randint(1, 16)):
            out[rng.randrange(len(out))] = rng.randrange(256)
    elif kind == 1:  # an extreme 16- or 32-bit number in the first bytes (sizes, rates, counts)
        value = rng.choice(_EXTREMES)
        width, order = rng.choice([(2, "<H"), (4, "<I"), (2, ">H"), (4, ">I")])
        offset = rng.randrange(0, max(1, min(len(out), 512) - width))
        out[offset : offset + width] = struct.pack(order, value % (1 << (8 * width)))
    elif kind == 2:  # cut short
        del out[rng.randrange(1, len(out)) :]
    elif kind == 3:  # a piece repeated
        start = rng.randrange(len(out))
        piece = out[start : start + rng.randint(1, 4096)]
        at = rng.randrange(len(out))
        out[at:at] = piece * rng.randint(1, 8)
    else:  # random bytes inserted
        at = rng.randrange(len(out))
        out[at:at] = rng.randbytes(rng.randint(1, 256))
    return bytes(out)


def mutants(key: str, count: int, seed: int) -> Iterator[tuple[str, bytes]]:
    """``count`` (name, bytes) mutants of the fixture files of ``key``, reproducible by seed."""
    rng = random.Random(f"{key}-{seed}")
    originals = [(name, (INPUTS / name).read_bytes()) for name in SEEDS[key]]
    for number in range(count):
        name, data = originals[number % len(originals)]
        yield f"{key}/{seed}-{number}-{name}", mutate(data, rng)


def text_mutants(count: int, seed: int) -> Iterator[tuple[str, str]]:
    """Texts that stress the tokenizer: long words, control and private-use characters, emoji."""
    rng = random.Random(f"texts-{seed}")
    pieces = ["a" * 2048, "\x00\x01\x1b[2J", "\ue000" * 50, "👍🏽" * 300, " \t\n" * 500, "дом"]
    for number in range(count):
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(1, 6)))
        yield f"texts/{seed}-{number}", text[: rng.randint(1, 12_000)]
