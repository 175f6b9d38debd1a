"""Kaldi's log-mel filterbank for ImageBind's audio settings, with its constants made once.

``torchaudio.compliance.kaldi.fbank`` rebuilds the Hann window and the mel
matrix on every call and computes a frame energy nobody reads; for a 2 s
clip that is two thirds of its time. :class:`LogMelFilterbank` runs the same
tensor operations in the same order on constants it builds once, so its
output is bit-identical (tested against ``kaldi.fbank``) at a third of the cost.

Settings (the reference's): 16 kHz, 25 ms windows every 10 ms, edges
snipped, DC offset removed, pre-emphasis 0.97, Hann window, FFT of 512,
power spectrum, mel bins from 20 Hz to Nyquist, log floored at float32's eps,
no dither, no energy, channel 0 of a multi-channel clip.
"""

from __future__ import annotations

from functools import lru_cache

import torch
import torch.nn.functional as F
import torchaudio.compliance.kaldi as kaldi

from .constants import AUDIO_FRAME_LENGTH_MS, AUDIO_FRAME_SHIFT_MS, AUDIO_SAMPLE_RATE

WINDOW_SAMPLES = int(AUDIO_SAMPLE_RATE * AUDIO_FRAME_LENGTH_MS / 1000)
SHIFT_SAMPLES = int(AUDIO_SAMPLE_RATE * AUDIO_FRAME_SHIFT_MS / 1000)
FFT_SIZE = 1 << (WINDOW_SAMPLES - 1).bit_length()
PREEMPHASIS = 0.97
LOW_HZ = 20.0


class LogMelFilterbank:
    """``(channels, samples)`` float32 → log-mel energies ``(frames, num_mel_bins)``."""

    def __init__(self, num_mel_bins: int) -> None:
        self.num_mel_bins = num_mel_bins
        self.window = torch.hann_window(WINDOW_SAMPLES, periodic=False).unsqueeze(0)
        # Kaldi's defaults for what ImageBind leaves alone: high 0 = Nyquist, no VTLN warp.
        banks, _ = kaldi.get_mel_banks(
            num_mel_bins, FFT_SIZE, float(AUDIO_SAMPLE_RATE), LOW_HZ, 0.0, 100.0, -500.0, 1.0
        )
        self.mel_t = F.pad(banks.float(), (0, 1)).T
        self.epsilon = torch.tensor(torch.finfo(torch.float32).eps)

    def __call__(self, clip: torch.Tensor) -> torch.Tensor:
        samples = clip[0]
        if samples.shape[0] < WINDOW_SAMPLES:
            return torch.empty(0, self.num_mel_bins)
        count = 1 + (samples.shape[0] - WINDOW_SAMPLES) // SHIFT_SAMPLES
        step = samples.stride(0)
        frames = samples.as_strided((count, WINDOW_SAMPLES), (SHIFT_SAMPLES * step, step))
        frames = frames - frames.mean(dim=1).unsqueeze(1)
        previous = F.pad(frames.unsqueeze(0), (1, 0), mode="replicate").squeeze(0)
        frames = frames - PREEMPHASIS * previous[:, :-1]
        frames = frames * self.window
        frames = F.pad(frames.unsqueeze(0), (0, FFT_SIZE - WINDOW_SAMPLES)).squeeze(0)
        power = torch.fft.rfft(frames).abs().pow(2.0)
        return torch.max(torch.mm(power, self.mel_t), self.epsilon).log()


@lru_cache(maxsize=4)
def log_mel_filterbank(num_mel_bins: int) -> LogMelFilterbank:
    """The filterbank for ``num_mel_bins``, built once per process."""
    return LogMelFilterbank(num_mel_bins)
