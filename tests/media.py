"""Media synthesised in memory for the audio and video preprocessing tests.

Everything is encoded with PyAV (or the standard library's ``wave``) into
``bytes``; nothing touches the disk.
"""

from __future__ import annotations

import io
import itertools
import wave
from collections.abc import Iterable

import av
import numpy as np

# A colour per frame index that survives lossy 4:2:0 coding (steps of 8 levels).
_STEP = 8
_PER_CHANNEL = 28  # 16 + 8 * 27 = 232 < 255


def tone(freqs: list[float], seconds: float, rate: int, amplitude: float = 0.5) -> np.ndarray:
    """One sine per channel, float64 (channels, samples) in [-amplitude, amplitude]."""
    t = np.arange(round(seconds * rate)) / rate
    return np.stack([amplitude * np.sin(2 * np.pi * f * t) for f in freqs])


def to_int16(waveform: np.ndarray) -> np.ndarray:
    """Float (channels, samples) in [-1, 1] -> int16, clipped."""
    return np.clip(np.round(waveform * 32767), -32768, 32767).astype(np.int16)


def wav_bytes(waveform: np.ndarray, rate: int) -> bytes:
    """A 16-bit PCM WAV of float (channels, samples), written with ``wave``."""
    samples = to_int16(waveform)
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(samples.shape[0])
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(samples.T.tobytes())
    return buffer.getvalue()


def encode_audio(
    waveform: np.ndarray,
    rate: int,
    container: str,
    codec: str,
    options: dict[str, str] | None = None,
) -> bytes:
    """Float (channels, samples) encoded with PyAV as ``codec`` in ``container``.

    The samples go in as int16, so lossless codecs hold exactly what
    :func:`wav_bytes` holds.
    """
    channels = waveform.shape[0]
    layout = {1: "mono", 2: "stereo"}[channels]
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format=container) as out:
        stream = out.add_stream(codec, rate=rate, options=options or {})
        stream.layout = layout
        packed = np.ascontiguousarray(to_int16(waveform).T.reshape(1, -1))
        frame = av.AudioFrame.from_ndarray(packed, format="s16", layout=layout)
        frame.sample_rate = rate
        frame.pts = 0
        for packet in stream.encode(frame):
            out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return buffer.getvalue()


def index_colour(index: int) -> tuple[int, int, int]:
    """The RGB colour that encodes frame ``index`` (0 <= index < 784)."""
    return (16 + _STEP * (index % _PER_CHANNEL), 16 + _STEP * (index // _PER_CHANNEL), 128)


def colour_index(rgb: np.ndarray) -> int:
    """Inverse of :func:`index_colour` for a decoded (possibly rounded) colour."""
    low = round((float(rgb[0]) - 16) / _STEP)
    high = round((float(rgb[1]) - 16) / _STEP)
    return low + _PER_CHANNEL * high


def indexed_frames(count: int, width: int, height: int) -> list[np.ndarray]:
    """``count`` uniform RGB24 frames (height, width, 3) whose colour encodes their index."""
    return [np.full((height, width, 3), index_colour(i), np.uint8) for i in range(count)]


def ramp_frame(width: int, height: int, horizontal: bool) -> np.ndarray:
    """A grey ramp, dark to bright from left to right (or top to bottom)."""
    length = width if horizontal else height
    ramp = np.linspace(16, 235, length).round().astype(np.uint8)
    plane = np.tile(ramp, (height, 1)) if horizontal else np.tile(ramp[:, None], (1, width))
    return np.repeat(plane[:, :, None], 3, axis=2)


VIDEO_CODECS = {
    "mp4": ("libx264", {"crf": "1", "preset": "veryfast"}),
    "mov": ("libx264", {"crf": "1", "preset": "veryfast"}),
    "mp4-mpeg4": ("mpeg4", {"qscale": "1"}),
    "webm": ("libvpx-vp9", {"lossless": "1", "deadline": "realtime", "cpu-used": "8"}),
    "webm-vp8": ("vp8", {"crf": "4", "b": "1M"}),
}


def encode_video(
    frames: Iterable[np.ndarray], fps: int, kind: str = "mp4", options: dict | None = None
) -> bytes:
    """RGB24 frames encoded at ``fps`` (yuv420p); ``kind`` is a key of VIDEO_CODECS.

    ``frames`` may be a generator (long or large videos); ``options`` override the codec's.
    """
    codec, defaults = VIDEO_CODECS[kind]
    container = kind.split("-")[0]
    frames = iter(frames)
    first = next(frames)
    height, width, _ = first.shape
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format=container) as out:
        stream = out.add_stream(codec, rate=fps, options={**defaults, **(options or {})})
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for index, image in enumerate(itertools.chain([first], frames)):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts = index
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return buffer.getvalue()


def png_bytes() -> bytes:
    """A small PNG, encoded with PyAV."""
    image = np.zeros((16, 16, 3), np.uint8)
    frame = av.VideoFrame.from_ndarray(image, format="rgb24")
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="image2pipe") as out:
        stream = out.add_stream("png", rate=1)
        stream.width, stream.height, stream.pix_fmt = 16, 16, "rgb24"
        for packet in stream.encode(frame):
            out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return buffer.getvalue()
