"""PCM WAVs read without FFmpeg give exactly FFmpeg's floats; anything else goes to FFmpeg."""

from __future__ import annotations

import struct

import numpy as np
import pytest
import torch

from ib_vectorizer.errors import MediaError, MediaTooLong
from ib_vectorizer.preprocess.audio import decode_audio, decode_with_ffmpeg
from ib_vectorizer.preprocess.wav import read_pcm_wav

from .media import encode_audio, tone

PCM, FLOAT, EXTENSIBLE = 1, 3, 0xFFFE


def riff_wav(
    payload: bytes,
    tag: int,
    channels: int,
    rate: int,
    bits: int,
    *,
    extensible: bool = False,
    data_size: int | None = None,
    chunks_before_data: bytes = b"",
) -> bytes:
    """A WAV written byte by byte, so every header variant can be made."""
    block = channels * bits // 8
    header = struct.pack(
        "<HHIIHH", EXTENSIBLE if extensible else tag, channels, rate, rate * block, block, bits
    )
    if extensible:
        guid_tail = b"\x00\x00\x00\x00\x10\x00\x80\x00\x00\xaa\x00\x38\x9b\x71"
        header += struct.pack("<HHI", 22, bits, 0) + struct.pack("<H", tag) + guid_tail
    size = len(payload) if data_size is None else data_size
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(header)) + header + chunks_before_data
    body += b"data" + struct.pack("<I", size) + payload
    return b"RIFF" + struct.pack("<I", len(body)) + body


def random_payload(dtype: str, channels: int, frames: int, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    if dtype == "i3":
        return rng.integers(0, 256, frames * channels * 3, dtype=np.uint8).tobytes()
    if dtype.startswith("f"):
        return rng.uniform(-1, 1, frames * channels).astype("<" + dtype).tobytes()
    info = np.iinfo(dtype)
    return rng.integers(info.min, info.max, frames * channels, dtype=dtype, endpoint=True).tobytes()


FORMATS = [  # (format tag, bits, payload dtype)
    (PCM, 8, "u1"),
    (PCM, 16, "i2"),
    (PCM, 24, "i3"),
    (PCM, 32, "i4"),
    (FLOAT, 32, "f4"),
    (FLOAT, 64, "f8"),
]


def assert_same_as_ffmpeg(data: bytes) -> None:
    direct = read_pcm_wav(data)
    assert direct is not None, "a PCM WAV must be read directly"
    samples, rate = direct
    expected, expected_rate = decode_with_ffmpeg(data, max_seconds=None)
    assert rate == expected_rate
    assert samples.dtype == np.float32 and samples.flags.c_contiguous
    assert torch.equal(torch.from_numpy(samples), expected)


@pytest.mark.parametrize("tag,bits,dtype", FORMATS, ids=[f"{t}-{b}" for t, b, _ in FORMATS])
@pytest.mark.parametrize("channels", [1, 2, 6])
def test_every_pcm_layout_is_bit_identical_to_ffmpeg(tag, bits, dtype, channels):
    payload = random_payload(dtype, channels, frames=4_001)  # odd: ends between FFmpeg frames
    assert_same_as_ffmpeg(riff_wav(payload, tag, channels, 22_050, bits))
    assert_same_as_ffmpeg(riff_wav(payload, tag, channels, 22_050, bits, extensible=True))


def test_files_written_by_ffmpeg_are_bit_identical():
    waveform = tone([300.0, 2000.0], seconds=1.5, rate=44_100)
    for codec in ("pcm_u8", "pcm_s16le", "pcm_s24le", "pcm_s32le", "pcm_f32le", "pcm_f64le"):
        assert_same_as_ffmpeg(encode_audio(waveform, 44_100, "wav", codec))


def test_other_chunks_odd_sizes_and_streaming_sizes_are_handled():
    payload = random_payload("i2", 2, frames=1_000)
    odd_list = b"LIST" + struct.pack("<I", 5) + b"INFOx" + b"\x00"  # padded to even
    assert_same_as_ffmpeg(riff_wav(payload, PCM, 2, 16_000, 16, chunks_before_data=odd_list))
    for unknown in (0, 0xFFFFFFFF):  # what a streaming writer leaves
        samples, _ = read_pcm_wav(riff_wav(payload, PCM, 2, 16_000, 16, data_size=unknown))
        assert samples.shape == (2, 1_000)


@pytest.mark.parametrize("codec", ["pcm_alaw", "pcm_mulaw", "adpcm_ima_wav"])
def test_compressed_wavs_go_to_ffmpeg(codec):
    data = encode_audio(tone([440.0], seconds=1.0, rate=8_000), 8_000, "wav", codec)
    assert read_pcm_wav(data) is None
    samples, rate = decode_audio(data)
    assert rate == 8_000 and samples.shape[0] == 1 and samples.shape[1] > 7_000


def test_not_a_wav_is_left_to_ffmpeg():
    flac = encode_audio(tone([440.0], seconds=0.5, rate=16_000), 16_000, "flac", "flac")
    assert read_pcm_wav(flac) is None
    assert read_pcm_wav(b"RIFF\x00\x00\x00\x00WAVE") is None  # no fmt, no data


def test_limits_and_errors_are_the_same_as_through_ffmpeg():
    long = riff_wav(random_payload("i2", 1, frames=16_000 * 3), PCM, 1, 16_000, 16)
    with pytest.raises(MediaTooLong, match="longer than the limit of 2 s"):
        decode_audio(long, max_seconds=2)
    empty = riff_wav(b"", PCM, 1, 16_000, 16)
    with pytest.raises(MediaError, match="0 samples"):
        decode_audio(empty)
    cut = riff_wav(random_payload("i2", 1, frames=1_000), PCM, 1, 16_000, 16, data_size=4_000)
    with pytest.raises(MediaError, match="truncated"):
        decode_audio(cut)
