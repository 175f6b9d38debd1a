"""Audio bytes -> the reference ImageBind audio input, float32 (3, 1, M, F).

M is the model's ``audio_num_mel_bins`` and F its ``audio_target_len`` (128 and
204 for imagebind_huge). These are the reference implementation's rules,
because the checkpoint was trained on exactly these features:

1. Decode every frame of the first audio stream with PyAV to float32 in
   [-1, 1], shape (channels, samples). Integer samples are scaled by their full
   range (``s16 / 32768``), as the reference's loader did.
2. Resample to 16 kHz with ``torchaudio.functional.resample`` (defaults).
   Only the samples the clips of step 3 cover are resampled, with the same
   filter and arithmetic (bit for bit the same values, tested): the filter's
   scratch memory grows with what is resampled, 1.5 GB for 10 minutes of
   48 kHz stereo.
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
- A sample rate whose exact resampling filter would have more than
  ``MAX_RESAMPLE_TAPS`` coefficients (no rate recorders use comes near it;
  16001 Hz would need 256 million, 4 GB and 10 s) is resampled as if it were
  the nearest rate within 1% whose filter fits: 16001 Hz as 16000 Hz, a
  change of pitch and tempo of 0.006%. Rates with no such neighbour are refused.
- Samples that are NaN, infinite or too large for a spectrum (float WAVs can
  hold any float) are an error, never a NaN vector.

What decoding costs is estimated from the header before it starts
(:func:`audio_cost`): the decoded samples and the filter; a stream that decodes
to more than its header promised is stopped at the item's limit.
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterator
from contextlib import contextmanager
from fractions import Fraction
from typing import BinaryIO

import av
import numpy as np
import torch
from torchaudio.functional.functional import _get_sinc_resample_kernel

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
from ib_vectorizer.preprocess.limits import DECODER_SCRATCH, NO_LIMITS, DecodeLimits, ItemCost
from ib_vectorizer.preprocess.wav import (
    check_wav_not_truncated,
    pcm_layout,
    read_pcm_wav,
    samples_to_float,
)

__all__ = [
    "audio_cost",
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
    limits: DecodeLimits = NO_LIMITS,
) -> torch.Tensor:
    """Decode ``data`` (WAV, FLAC, MP3, OGG, M4A, ...) to float32 (3, 1, mel bins, target_len)."""
    waveform, sample_rate = decode_audio(data, max_seconds, limits)
    return audio_input(waveform, sample_rate, num_mel_bins, target_len)


def audio_input(
    waveform: torch.Tensor,
    sample_rate: int,
    num_mel_bins: int = IMAGEBIND_HUGE.audio_num_mel_bins,
    target_len: int = IMAGEBIND_HUGE.audio_target_len,
) -> torch.Tensor:
    """Decoded samples (channels, samples) at ``sample_rate`` → the model input (steps 2-5).

    Clips that overlap share their samples (a span), so the mean subtraction of
    one leaks into the next, as in the reference. Modifies ``waveform`` in
    place when no resampling is needed.
    """
    resampler = ModelRateResampler(waveform, resampling_rate(sample_rate))
    clips = []
    for span_first, span_stop, bounds in clip_spans(clip_bounds(resampler.length)):
        samples = resampler.range(span_first, span_stop)
        for first, stop in bounds:
            clip = samples[:, first - span_first : stop - span_first]  # a view: leaks, as said
            clip -= clip.mean()
            clips.append(waveform_to_fbank(clip, num_mel_bins, target_len))
    return torch.stack(clips)


def clip_spans(
    bounds: list[tuple[int, int]],
) -> list[tuple[int, int, list[tuple[int, int]]]]:
    """Consecutive overlapping clips merged: ``(first, stop, clips in it)`` per span."""
    spans: list[tuple[int, int, list[tuple[int, int]]]] = []
    for first, stop in bounds:
        if spans and first < spans[-1][1]:
            span_first, span_stop, inside = spans[-1]
            spans[-1] = (span_first, max(span_stop, stop), [*inside, (first, stop)])
        else:
            spans.append((first, stop, [(first, stop)]))
    return spans


# FFmpeg's default probe reads up to 5 MB, decoding packets to guess stream
# parameters that every audio container states in its header and that we take
# from the decoded frames anyway; a 32 KiB probe makes opening 10x cheaper.
PROBE_OPTIONS = {"probesize": "32768"}


def decode_audio(
    data: bytes, max_seconds: float | None = MAX_AUDIO_SECONDS, limits: DecodeLimits = NO_LIMITS
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
        return decode_with_ffmpeg(data, max_seconds, limits)
    samples, sample_rate = pcm
    if max_seconds is not None and samples.shape[1] > max_seconds * sample_rate:
        raise MediaTooLong(f"audio is longer than the limit of {max_seconds:g} s")
    if samples.shape[1] == 0:
        raise MediaError("audio is empty (0 samples)")
    return torch.from_numpy(samples), sample_rate


def decode_with_ffmpeg(
    data: bytes, max_seconds: float | None = MAX_AUDIO_SECONDS, limits: DecodeLimits = NO_LIMITS
) -> tuple[torch.Tensor, int]:
    """:func:`decode_audio` through PyAV, for any format FFmpeg reads."""
    with open_audio(io.BytesIO(data)) as (container, stream):
        chunks, sample_rate = _decode_stream(container, stream, max_seconds, limits)
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
        stream = container.streams.audio[0]
        if stream.codec_context is None:
            raise MediaError("audio stream's codec is not one FFmpeg can decode")
        yield container, stream


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


def _decode_stream(
    container, stream, max_seconds: float | None, limits: DecodeLimits
) -> tuple[list[np.ndarray], int]:
    """Decoded chunks (channels, samples) of one stream and their common sample rate."""
    chunks: list[np.ndarray] = []
    sample_rate = samples = 0
    for sample_rate, chunk in float_chunks(container, stream):
        limits.check_deadline("audio")
        samples += chunk.shape[1]
        if max_seconds is not None and samples > max_seconds * sample_rate:
            raise MediaTooLong(f"audio is longer than the limit of {max_seconds:g} s")
        limits.check_bytes(samples * chunk.shape[0] * DECODED_BYTES_PER_SAMPLE, "audio")
        chunks.append(chunk)
    return chunks, sample_rate


# Through FFmpeg, every decoded sample is held twice at the end (the chunks, then joined).
DECODED_BYTES_PER_SAMPLE = 2 * 4


def audio_cost(data: bytes, max_seconds: float | None = MAX_AUDIO_SECONDS) -> ItemCost:
    """What :func:`load_audio` will take to decode ``data``, from its header.

    MediaTooLong or MediaError when the header already breaks a limit.
    """
    if not data:
        raise MediaError("audio file is empty (0 bytes)")
    check_wav_not_truncated(data)
    layout = pcm_layout(data)
    if layout is not None:
        rate, channels, seconds = layout.rate, layout.channels, layout.frames / layout.rate
        widened = 4 if layout.dtype == "<i3" else 0  # 24-bit samples are widened to 32 first
        decoded = layout.frames * channels * (4 + widened)
        kind = "PCM WAV"
    else:
        with open_audio(io.BytesIO(data)) as (container, stream):
            context = stream.codec_context
            rate, channels, kind = context.sample_rate, context.channels, context.name
            header_seconds = _header_seconds(container, stream)
        if not rate or not channels:
            raise MediaError("audio stream does not say its sample rate and channel count")
        seconds = header_seconds if header_seconds is not None else (max_seconds or 0.0)
        decoded = math.ceil(seconds * rate) * channels * DECODED_BYTES_PER_SAMPLE
    if max_seconds is not None and seconds > max_seconds:
        raise MediaTooLong(f"audio is longer than the limit of {max_seconds:g} s")
    what = f"{seconds:.1f} s of {rate} Hz {channels}-channel {kind} audio"
    return ItemCost(decoded + resampling_cost(rate, channels) + DECODER_SCRATCH, what)


def _header_seconds(container, stream) -> float | None:
    """The duration the stream's or the container's header states, if any."""
    if stream.duration is not None and stream.duration > 0 and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None and container.duration > 0:
        return container.duration / av.time_base
    return None


def frame_to_float(frame: av.AudioFrame) -> np.ndarray:
    """One decoded frame as float32 (channels, samples) in [-1, 1]."""
    array = frame.to_ndarray()
    channels = frame.layout.nb_channels
    if not frame.format.is_planar:  # packed: (1, samples * channels), interleaved
        array = array.reshape(-1, channels).T
    if array.dtype.kind == "f":
        return np.ascontiguousarray(array, dtype=np.float32)  # flt / dbl
    return samples_to_float(array)  # u8, s16, s32, s64


# torchaudio's sinc filter from a rate to 16 kHz has (16000 / g) × (rate / g + 2·width)
# coefficients, g = gcd(rate, 16000): 76 thousand for 44100 Hz, 3 million for 47952 Hz,
# 11 million for 44056 Hz (185 MB while built), 256 million for 16001 Hz.
MAX_RESAMPLE_TAPS = 12_000_000
RATE_TOLERANCE = 0.01  # how far a rate may move to get a filter that fits
_FILTER_ZEROS, _ROLLOFF = 6, 0.99  # torchaudio's defaults, which the reference uses
_FILTER_BYTES_PER_TAP = 17  # measured: the kernel and the float64 arrays that build it


def _filter_shape(rate: int) -> tuple[int, int, int]:
    """(orig, new, width) of torchaudio's filter from ``rate``: ``new`` phases of
    ``2·width + orig`` coefficients, stepping ``orig`` input samples per ``new`` outputs."""
    common = math.gcd(rate, AUDIO_SAMPLE_RATE)
    orig, new = rate // common, AUDIO_SAMPLE_RATE // common
    return orig, new, math.ceil(_FILTER_ZEROS * orig / (min(orig, new) * _ROLLOFF))


def resample_taps(rate: int) -> int:
    """The coefficients of torchaudio's default filter from ``rate`` to 16 kHz (0: none)."""
    if rate == AUDIO_SAMPLE_RATE:
        return 0
    orig, new, width = _filter_shape(rate)
    return new * (2 * width + orig)


def resampling_rate(rate: int) -> int:
    """The rate ``rate`` Hz samples are resampled from: itself, or the nearest whose filter fits.

    MediaError when no rate within 1% has a filter of at most MAX_RESAMPLE_TAPS.
    """
    if rate < 1:
        raise MediaError(f"audio has a sample rate of {rate} Hz")
    if resample_taps(rate) <= MAX_RESAMPLE_TAPS:
        return rate
    for step in range(1, int(rate * RATE_TOLERANCE) + 1):
        for candidate in (rate - step, rate + step):
            if resample_taps(candidate) <= MAX_RESAMPLE_TAPS:
                return candidate
    raise MediaError(
        f"audio has a sample rate of {rate} Hz, which no rate within 1% resamples to "
        f"16 kHz with a filter of at most {MAX_RESAMPLE_TAPS:,} coefficients"
    )


def resampling_cost(rate: int, channels: int) -> int:
    """The memory :func:`audio_input` takes for ``channels`` at ``rate``: filter and clips."""
    source = resampling_rate(rate)
    clip_out = math.ceil(AUDIO_CLIP_SECONDS * AUDIO_SAMPLE_RATE)
    if source == AUDIO_SAMPLE_RATE:
        return AUDIO_CLIPS * channels * 4 * clip_out
    orig, _, width = _filter_shape(source)
    clip_in = math.ceil(AUDIO_CLIP_SECONDS * source) + 2 * width + 2 * orig
    # Per clip: its padded input, the filter's output and that output reshaped, in float32.
    clips = AUDIO_CLIPS * channels * 4 * (clip_in + 2 * clip_out)
    return resample_taps(source) * _FILTER_BYTES_PER_TAP + clips


class ModelRateResampler:
    """One waveform resampled from ``rate`` to 16 kHz as torchaudio does it, a range at a time.

    ``range(first, stop)`` gives the values ``torchaudio.functional.resample``
    gives at those output positions: output sample j comes from filter phase
    ``j mod new`` applied at input ``(j div new) · orig − width``, so only the
    input under the range is convolved. The filter is built once for all the
    ranges (at an odd rate it is the costly part: 11 million coefficients for
    44056 Hz). At 16 kHz a range is a view into the waveform.
    """

    def __init__(self, waveform: torch.Tensor, rate: int) -> None:
        self.waveform = waveform
        self.rate = rate
        self.length = waveform.shape[1]  # of the output
        if rate == AUDIO_SAMPLE_RATE:
            return
        self.orig, self.new, _ = _filter_shape(rate)
        self.length = int(torch.ceil(torch.as_tensor(self.new * self.length / self.orig)).long())
        self.kernel, self.width = _get_sinc_resample_kernel(
            rate,
            AUDIO_SAMPLE_RATE,
            math.gcd(rate, AUDIO_SAMPLE_RATE),
            _FILTER_ZEROS,
            _ROLLOFF,
            "sinc_interp_hann",
            None,
            waveform.device,
            waveform.dtype,
        )

    def range(self, first: int, stop: int) -> torch.Tensor:
        """Output samples ``[first, stop)``, as far as there are, (channels, n)."""
        waveform = self.waveform
        if self.rate == AUDIO_SAMPLE_RATE:
            return waveform[:, first:stop]
        stop = min(stop, self.length)
        if stop <= first:
            return waveform.new_zeros((waveform.shape[0], 0))
        orig, new = self.orig, self.new
        first_block, stop_block = first // new, -(-stop // new)
        low = first_block * orig - self.width
        high = (stop_block - 1) * orig - self.width + self.kernel.shape[-1]
        length = waveform.shape[1]
        piece = waveform[:, max(low, 0) : min(high, length)]
        piece = torch.nn.functional.pad(piece, (max(-low, 0), max(high - length, 0)))
        blocks = torch.nn.functional.conv1d(piece[:, None], self.kernel, stride=orig)
        samples = blocks.transpose(1, 2).reshape(waveform.shape[0], -1)
        offset = first_block * new
        return samples[:, first - offset : stop - offset]


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
    if not torch.isfinite(fbank).all():
        raise MediaError(
            "audio samples are NaN, infinite or too large for a spectrum "
            "(float samples belong in [-1, 1])"
        )
    mean = torch.tensor(AUDIO_FBANK_MEAN, dtype=fbank.dtype)
    std = torch.tensor(AUDIO_FBANK_STD, dtype=fbank.dtype)
    return ((fbank - mean) / std).unsqueeze(0)
