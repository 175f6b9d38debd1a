"""RIFF/WAVE files read without a decoder: their samples are already raw PCM.

Opening a file in FFmpeg costs about 2 ms (format probing, stream analysis)
and PyAV hands a WAV back in ~1000-sample frames, each converted on its own:
for the usual 5-second clip that is half of the audio preprocessing. Plain
integer and float PCM is read here instead, into exactly the floats the PyAV
path gives (tested bit for bit); anything else (compressed codecs, big-endian
RIFX, unusual layouts) returns ``None`` and goes to FFmpeg.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from ..errors import MediaError

_PCM, _FLOAT, _EXTENSIBLE = 0x0001, 0x0003, 0xFFFE
_UNKNOWN_SIZES = (0, 0xFFFFFFFF)  # what streaming writers leave in the data chunk's size


def riff_chunks(data: bytes) -> Iterator[tuple[bytes, int, int]]:
    """(chunk id, offset of its payload, declared size) of a RIFF/WAVE file's chunks, in order.

    Nothing for other files. The payload may extend past the end of ``data``.
    """
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        return
    offset = 12
    while offset + 8 <= len(data):
        chunk_id = data[offset : offset + 4]
        (size,) = struct.unpack_from("<I", data, offset + 4)
        yield chunk_id, offset + 8, size
        offset += 8 + size + (size & 1)  # chunks are padded to an even size


def check_wav_not_truncated(data: bytes, file_size: int | None = None) -> None:
    """Raise if a RIFF/WAVE file holds fewer sample bytes than its ``data`` chunk declares.

    FFmpeg trims the duration of a cut-off WAV to what is there and decodes it
    without complaint, so a half-downloaded file would silently give a vector.
    Streaming writers leave the size as 0 or 0xFFFFFFFF; those are not checked.
    ``data`` may be just the file's head when ``file_size`` gives its length.
    """
    for chunk_id, offset, size in riff_chunks(data):
        if chunk_id == b"data":
            present = (len(data) if file_size is None else file_size) - offset
            if size not in _UNKNOWN_SIZES and present < 0.99 * size:
                raise MediaError(
                    f"audio file is truncated: the WAV header declares {size} bytes "
                    f"of samples, the file holds {max(present, 0)}"
                )
            return


@dataclass(frozen=True)
class PcmLayout:
    """Where a PCM WAV's samples are and how they are stored."""

    channels: int
    rate: int
    dtype: str  # numpy's name for one sample; "<i3" for 24-bit
    offset: int  # of the first sample
    frames: int  # samples per channel present in the file

    @property
    def sample_bytes(self) -> int:
        return 3 if self.dtype == "<i3" else np.dtype(self.dtype).itemsize


def pcm_layout(data: bytes) -> PcmLayout | None:
    """The layout of a little-endian PCM or float WAV this reader understands, else None."""
    layout = None
    for chunk_id, offset, size in riff_chunks(data):
        if chunk_id == b"fmt ":
            layout = _sample_layout(data[offset : offset + size])
            if layout is None:
                return None
        elif chunk_id == b"data":
            if layout is None:
                return None
            channels, rate, dtype = layout
            end = len(data) if size in _UNKNOWN_SIZES else min(offset + size, len(data))
            block = channels * (3 if dtype == "<i3" else np.dtype(dtype).itemsize)
            return PcmLayout(channels, rate, dtype, offset, max(end - offset, 0) // block)
    return None


def read_pcm_wav(data: bytes) -> tuple[np.ndarray, int] | None:
    """Float32 samples (channels, n) and the rate of a PCM WAV, as FFmpeg + PyAV decode it.

    Integers are scaled by their full range (8-bit is offset by 128; 24-bit is
    widened to 32 like FFmpeg does); floats are kept. ``None`` when the file is
    not a little-endian PCM or float WAV this reader understands. Beside the
    file, memory holds the float32 samples (and, for 24-bit, the widened ones).
    """
    layout = pcm_layout(data)
    if layout is None:
        return None
    size = layout.frames * layout.channels * layout.sample_bytes
    raw = memoryview(data)[layout.offset : layout.offset + size]
    return _to_float(raw, layout.dtype, layout.channels), layout.rate


def _sample_layout(fmt: bytes) -> tuple[int, int, str] | None:
    """(channels, rate, numpy dtype of one sample) from a ``fmt`` chunk, or None."""
    if len(fmt) < 16:
        return None
    tag, channels, rate, _, block_align, bits = struct.unpack_from("<HHIIHH", fmt)
    if tag == _EXTENSIBLE:
        if len(fmt) < 40 or struct.unpack_from("<H", fmt, 18)[0] != bits:
            return None  # fewer valid bits than the container holds: leave it to FFmpeg
        (tag,) = struct.unpack_from("<H", fmt, 24)  # the sub-format GUID starts with the tag
    dtypes = {(_PCM, 8): "u1", (_PCM, 16): "<i2", (_PCM, 24): "<i3", (_PCM, 32): "<i4"}
    dtypes |= {(_FLOAT, 32): "<f4", (_FLOAT, 64): "<f8"}
    dtype = dtypes.get((tag, bits))
    if dtype is None or channels < 1 or rate < 1 or block_align != channels * bits // 8:
        return None
    return channels, rate, dtype


def samples_to_float(array: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Integer or float samples → float32 in [-1, 1], with PyAV's arithmetic.

    Unsigned 8-bit is centred on 128; signed integers are divided by their
    full range (``s16 / 32768``); floats are kept. The one rule for FFmpeg's
    decoded frames and for WAVs read here. PyAV divides in float64; for
    samples of up to 32 bits, rounding to float32 first and then scaling by a
    power of two gives the same floats, without a float64 copy. ``out``: a
    float32 array of the same shape to fill.
    """
    if out is None:
        out = np.empty(array.shape, np.float32)
    if array.dtype == np.uint8:
        np.subtract(array, 128, out=out, dtype=np.float32)
        out *= np.float32(1 / 128)
    elif array.dtype.kind == "i" and array.dtype.itemsize <= 4:
        out[...] = array
        out *= np.float32(2.0 ** -(8 * array.dtype.itemsize - 1))
    elif array.dtype.kind == "i":  # 64-bit: float32 cannot hold it exactly, round once
        out[...] = array / 2.0 ** (8 * array.dtype.itemsize - 1)
    else:
        out[...] = array
    return out


def _to_float(raw: memoryview, dtype: str, channels: int) -> np.ndarray:
    """Interleaved samples → float32 (channels, n), one channel at a time."""
    samples = _int32(raw, dtype) if dtype in ("<i3", "<i4") else np.frombuffer(raw, dtype)
    interleaved = samples.reshape(-1, channels)
    out = np.empty((channels, interleaved.shape[0]), np.float32)
    for channel in range(channels):
        samples_to_float(interleaved[:, channel], out=out[channel])
    return out


def _int32(raw: memoryview, dtype: str) -> np.ndarray:
    """32-bit samples; 24-bit ones in the top three bytes, as FFmpeg widens them."""
    if dtype == "<i4":
        return np.frombuffer(raw, "<i4")
    triples = np.frombuffer(raw, np.uint8).reshape(-1, 3)
    widened = np.zeros((triples.shape[0], 4), np.uint8)
    widened[:, 1:] = triples
    return widened.view("<i4").reshape(-1)
