"""Audio bytes -> the reference ImageBind audio input, float32 (3, 1, M, F).

M is the model's ``audio_num_mel_bins`` and F its ``audio_target_len`` (128 and
204 for imagebind_huge). These are the reference implementation's rules,
because the checkpoint was trained on exactly these features:

1. Decode every frame of the first audio stream with PyAV to float32 in
   [-1, 1], shape (channels, samples). Integer samples are scaled by their full
   range (``s16 / 32768``), as the reference's loader did.
2. Resample to 16 kHz with ``torchaudio.functional.resample`` (defaults).
3. Three clips of 2 s starting at ``i * max(D - 2, 0) / 3`` seconds (D = the
   decoded duration; the divisor is the clip count, so the clips never reach
   the end of a long file). A clip is the samples
   ``[int(start * 16000), int((start + 2) * 16000))``, computed with exact
   fractions like the reference's clip sampler.
4. Per clip: subtract the clip's mean (over all channels) **in place on a view
   of the whole waveform**, so a later clip that overlaps an earlier one sees
   the earlier subtraction too. This quirk is kept on purpose: the reference
   features, and hence the trained model, include it.
5. Kaldi fbank (htk_compat, hanning, M mel bins, dither 0, 25 ms / 10 ms, no
   energy, 16 kHz); on a multi-channel clip it reads channel 0 only. Transpose
   to (M, frames), zero-pad or cut on the right to F frames, then
   ``(x + 4.268) / 9.138``.

Where the reference crashes we do something sensible instead:

- A clip shorter than one 25 ms window (400 samples) makes the reference's
  fbank return no frame and crash. We zero-pad such a clip on the right to one
  window (after the mean subtraction), so fbank yields one frame; the usual
  zero-padding to F frames follows.
- Every failure is a :class:`MediaError` with a short reason (not decodable, no
  audio stream, no samples, truncated WAV) instead of a decoder exception.
  FFmpeg's WAV reader silently accepts a file cut short, so for RIFF/WAVE input
  we compare the ``data`` chunk's declared size with the bytes present.
- A packet the decoder rejects is skipped and the samples of the others are
  kept; a container that breaks part-way is used up to the break (an error
  only if no sample came out).
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from contextlib import contextmanager
from fractions import Fraction
from typing import BinaryIO

import av
import numpy as np
import torch
import torchaudio.functional as AF

from ib_vectorizer.errors import MediaError, MediaTooLong
from ib_vectorizer.preprocess.config import IMAGEBIND_HUGE
from ib_vectorizer.preprocess.constants import (
    AUDIO_CLIP_SECONDS,
    AUDIO_CLIPS,
    AUDIO_FBANK_MEAN,
    AUDIO_FBANK_STD,
    AUDIO_SAMPLE_RATE,
)
from ib_vectorizer.preprocess.demux import stream_frames
from ib_vectorizer.preprocess.fbank import WINDOW_SAMPLES, log_mel_filterbank
from ib_vectorizer.preprocess.wav import check_wav_not_truncated, read_pcm_wav, samples_to_float

__all__ = [
    "audio_input",
    "clip_bounds",
    "decode_audio",
    "decode_with_ffmpeg",
    "load_audio",
    "waveform_to_fbank",
]


# Decoded audio is ~1000x larger than a compressed file of silence; beyond this
# many seconds a file is refused rather than decoded (the model sees 3 × 2 s).
MAX_AUDIO_SECONDS = 600.0


def load_audio(
    data: bytes,
    max_seconds: float | None = MAX_AUDIO_SECONDS,
    num_mel_bins: int = IMAGEBIND_HUGE.audio_num_mel_bins,
    target_len: int = IMAGEBIND_HUGE.audio_target_len,
) -> torch.Tensor:
    """Decode ``data`` (WAV, FLAC, MP3, OGG, M4A, ...) to float32 (3, 1, mel bins, target_len)."""
    waveform, sample_rate = decode_audio(data, max_seconds)
    return audio_input(waveform, sample_rate, num_mel_bins, target_len)


def audio_input(
    waveform: torch.Tensor,
    sample_rate: int,
    num_mel_bins: int = IMAGEBIND_HUGE.audio_num_mel_bins,
    target_len: int = IMAGEBIND_HUGE.audio_target_len,
) -> torch.Tensor:
    """Decoded samples (channels, samples) at ``sample_rate`` → the model input (steps 2-5).

    Modifies ``waveform`` in place when no resampling is needed (the mean subtraction).
    """
    waveform = resample_to_model_rate(waveform, sample_rate)
    clips = []
    for first, stop in clip_bounds(waveform.shape[1]):
        clip = waveform[:, first:stop]  # a view: the mean subtraction leaks, as in the reference
        clip -= clip.mean()
        clips.append(waveform_to_fbank(clip, num_mel_bins, target_len))
    return torch.stack(clips)


# FFmpeg's default probe reads up to 5 MB, decoding packets to guess stream
# parameters that every audio container states in its header and that we take
# from the decoded frames anyway; a 32 KiB probe makes opening 10x cheaper.
PROBE_OPTIONS = {"probesize": "32768"}


def decode_audio(
    data: bytes, max_seconds: float | None = MAX_AUDIO_SECONDS
) -> tuple[torch.Tensor, int]:
    """All samples of the first audio stream as float32 (channels, samples), and the rate.

    PCM WAVs are read directly (:mod:`.wav`), everything else through FFmpeg;
    both give the same floats.
    """
    if not data:
        raise MediaError("audio file is empty (0 bytes)")
    check_wav_not_truncated(data)
    pcm = read_pcm_wav(data)
    if pcm is None:
        return decode_with_ffmpeg(data, max_seconds)
    samples, sample_rate = pcm
    if max_seconds is not None and samples.shape[1] > max_seconds * sample_rate:
        raise MediaTooLong(f"audio is longer than the limit of {max_seconds:g} s")
    if samples.shape[1] == 0:
        raise MediaError("audio is empty (0 samples)")
    return torch.from_numpy(samples), sample_rate


def decode_with_ffmpeg(
    data: bytes, max_seconds: float | None = MAX_AUDIO_SECONDS
) -> tuple[torch.Tensor, int]:
    """:func:`decode_audio` through PyAV, for any format FFmpeg reads."""
    with open_audio(io.BytesIO(data)) as (container, stream):
        chunks, sample_rate = _decode_stream(container, stream, max_seconds)
    if not chunks:
        raise MediaError("audio is empty (0 samples)")
    waveform = np.concatenate(chunks, axis=1)
    if waveform.shape[1] == 0:
        raise MediaError("audio is empty (0 samples)")
    return torch.from_numpy(waveform), sample_rate


@contextmanager
def open_audio(source: BinaryIO) -> Iterator[tuple[av.container.InputContainer, av.AudioStream]]:
    """The container of a readable, seekable file and its first audio stream, or MediaError."""
    try:
        container = av.open(source, mode="r", options=PROBE_OPTIONS)
    except Exception as exc:
        raise MediaError("not a decodable audio file") from exc
    with container:
        if not container.streams.audio:
            raise MediaError("no audio stream")
        yield container, container.streams.audio[0]


def float_chunks(container, stream) -> Iterator[tuple[int, np.ndarray]]:
    """(sample rate, float32 samples (channels, n)) per decoded frame, in order.

    Raises MediaError when the rate or the channel count changes part-way through.
    """
    rate = channels = 0
    for frame in stream_frames(container, stream, "audio"):
        if frame.samples == 0:
            continue
        chunk = frame_to_float(frame)
        if not rate:
            rate, channels = frame.sample_rate, chunk.shape[0]
        elif frame.sample_rate != rate:
            raise MediaError("audio changes its sample rate part-way through")
        elif chunk.shape[0] != channels:
            raise MediaError("audio changes its channel count part-way through")
        yield rate, chunk


def _decode_stream(container, stream, max_seconds: float | None) -> tuple[list[np.ndarray], int]:
    """Decoded chunks (channels, samples) of one stream and their common sample rate."""
    chunks: list[np.ndarray] = []
    sample_rate = samples = 0
    for sample_rate, chunk in float_chunks(container, stream):
        samples += chunk.shape[1]
        if max_seconds is not None and samples > max_seconds * sample_rate:
            raise MediaTooLong(f"audio is longer than the limit of {max_seconds:g} s")
        chunks.append(chunk)
    return chunks, sample_rate


def frame_to_float(frame: av.AudioFrame) -> np.ndarray:
    """One decoded frame as float32 (channels, samples) in [-1, 1]."""
    array = frame.to_ndarray()
    channels = frame.layout.nb_channels
    if not frame.format.is_planar:  # packed: (1, samples * channels), interleaved
        array = array.reshape(-1, channels).T
    if array.dtype.kind == "f":
        return np.ascontiguousarray(array, dtype=np.float32)  # flt / dbl
    return samples_to_float(array)  # u8, s16, s32, s64


def resample_to_model_rate(waveform: torch.Tensor, sample_rate: int) -> torch.Tensor:
    """Resample (channels, samples) to 16 kHz with torchaudio's default sinc filter."""
    if sample_rate == AUDIO_SAMPLE_RATE:
        return waveform
    return AF.resample(waveform, orig_freq=sample_rate, new_freq=AUDIO_SAMPLE_RATE)


def clip_starts(duration: float, clip_seconds: float, clips: int) -> list[Fraction]:
    """Start times ``i * max(D - clip, 0) / clips`` as exact fractions (the reference sampler).

    Shared by the video loader. ``duration`` is a float like the reference's; the
    arithmetic after it is exact, so ``int(start * rate)`` truncates as it did.
    """
    span = Fraction(max(duration - clip_seconds, 0))
    return [span / clips * i for i in range(clips)]


def clip_bounds(num_samples: int) -> list[tuple[int, int]]:
    """Sample ranges ``[first, stop)`` of the three 2 s clips of a 16 kHz waveform."""
    rate = AUDIO_SAMPLE_RATE
    length = Fraction(AUDIO_CLIP_SECONDS)
    starts = clip_starts(num_samples / rate, AUDIO_CLIP_SECONDS, AUDIO_CLIPS)
    return [(int(start * rate), int((start + length) * rate)) for start in starts]


def waveform_to_fbank(
    clip: torch.Tensor,
    num_mel_bins: int = IMAGEBIND_HUGE.audio_num_mel_bins,
    target_len: int = IMAGEBIND_HUGE.audio_target_len,
) -> torch.Tensor:
    """A mean-subtracted clip (channels, samples) -> normalised fbank (1, mel bins, target_len)."""
    if clip.shape[1] < WINDOW_SAMPLES:  # the reference crashes here; pad to one window
        clip = torch.nn.functional.pad(clip, (0, WINDOW_SAMPLES - clip.shape[1]))
    # (num_mel_bins, frames); Kaldi's fbank reads channel 0 of a multi-channel clip
    fbank = log_mel_filterbank(num_mel_bins)(clip).T
    fbank = fbank[:, :target_len]
    missing = target_len - fbank.shape[1]
    if missing > 0:
        fbank = torch.nn.functional.pad(fbank, (0, missing))
    mean = torch.tensor(AUDIO_FBANK_MEAN, dtype=fbank.dtype)
    std = torch.tensor(AUDIO_FBANK_STD, dtype=fbank.dtype)
    return ((fbank - mean) / std).unsqueeze(0)
