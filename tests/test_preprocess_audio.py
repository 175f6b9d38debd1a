"""Audio bytes -> (3, 1, 128, 204): parity with the reference, then the rules on new inputs."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch

from ib_vectorizer.errors import MediaError
from ib_vectorizer.preprocess.audio import (
    clip_bounds,
    decode_audio,
    load_audio,
    waveform_to_fbank,
)
from ib_vectorizer.preprocess.constants import AUDIO_FBANK_MEAN, AUDIO_FBANK_STD

from .fixture_data import fixture_files
from .media import encode_audio, encode_video, indexed_frames, png_bytes, tone, wav_bytes

SHAPE = (3, 1, 128, 204)
# A zero-padded fbank frame after normalisation, computed in float32 like the loader.
PAD_VALUE = (torch.tensor(0.0) - torch.tensor(AUDIO_FBANK_MEAN)) / torch.tensor(AUDIO_FBANK_STD)


def expected_mel_bin(freq: float, bins: int = 128, rate: int = 16_000) -> int:
    """The Kaldi mel bin whose centre is nearest ``freq`` (20 Hz to Nyquist, HTK mel)."""

    def mel(f: float) -> float:
        return 1127.0 * math.log(1.0 + f / 700.0)

    low, high = mel(20.0), mel(rate / 2)
    centres = [low + (m + 1) * (high - low) / (bins + 1) for m in range(bins)]
    return int(np.argmin([abs(c - mel(freq)) for c in centres]))


def peak_bin(features: torch.Tensor, clip: int = 0) -> int:
    """The mel bin with the most energy, averaged over the clip's real frames."""
    return int(features[clip, 0, :, :150].mean(dim=1).argmax())


# --- parity with the reference ------------------------------------------------


def test_matches_reference_preprocessing(manifest, preprocessed):
    for row, path in enumerate(fixture_files(manifest, "audio")):
        got = load_audio(path.read_bytes())
        assert got.shape == SHAPE and got.dtype == torch.float32, path.name
        diff = np.abs(got.numpy() - preprocessed["audio"][row]).max()
        # 0.0 on AVX2 CPUs; on AVX-512 ones float rounding moves near-silent mel bins (log
        # power near 1e-7) by up to 4e-4. Leaving out the in-place mean leak: 1e-2 .. 3e-2.
        assert diff <= 1e-3, f"{path.name}: max abs diff {diff}"


# --- the rules on inputs the fixture does not have ----------------------------


def test_flac_44k_stereo_equals_the_same_samples_as_wav():
    waveform = tone([440.0, 1000.0], seconds=5.0, rate=44_100)
    flac = load_audio(encode_audio(waveform, 44_100, "flac", "flac"))
    wav = load_audio(wav_bytes(waveform, 44_100))
    assert flac.shape == SHAPE and torch.isfinite(flac).all()
    assert torch.equal(flac, wav)  # lossless: same samples, same features
    assert abs(peak_bin(flac) - expected_mel_bin(440.0)) <= 1  # channel 0 is the 440 Hz one


@pytest.mark.parametrize(
    ("container", "codec", "options"),
    [
        ("mp3", "libmp3lame", None),
        ("ogg", "vorbis", {"strict": "experimental"}),
        ("ogg", "libopus", None),
        ("ipod", "aac", None),  # .m4a
    ],
)
def test_lossy_formats_decode_to_the_right_tone(container, codec, options):
    rate = 48_000 if codec == "libopus" else 44_100
    waveform = tone([440.0, 1000.0], seconds=5.0, rate=rate)
    data = encode_audio(waveform, rate, container, codec, options)
    samples, decoded_rate = decode_audio(data)
    assert decoded_rate == rate
    assert samples.shape[0] == 2
    assert abs(samples.shape[1] / rate - 5.0) < 0.1  # encoder delay and padding aside
    rms = float(samples[0].square().mean().sqrt())
    assert 0.3 < rms < 0.4  # a 0.5 sine has RMS 0.354: scaled to [-1, 1], not raw integers
    features = load_audio(data)
    assert features.shape == SHAPE and torch.isfinite(features).all()
    for clip in range(3):
        assert abs(peak_bin(features, clip) - expected_mel_bin(440.0)) <= 1


@pytest.mark.parametrize("codec", ["pcm_f32le", "pcm_s32le", "pcm_s24le"])
def test_sample_formats_scale_like_16_bit(codec):
    waveform = tone([300.0, 2000.0], seconds=2.5, rate=22_050)
    reference = load_audio(wav_bytes(waveform, 22_050))
    assert torch.equal(load_audio(encode_audio(waveform, 22_050, "wav", codec)), reference)


def test_unsigned_8_bit_is_centred_and_scaled():
    waveform = tone([300.0], seconds=1.0, rate=8_000)
    samples, rate = decode_audio(encode_audio(waveform, 8_000, "wav", "pcm_u8"))
    assert rate == 8_000
    assert abs(float(samples.max()) - 0.5) < 1 / 64 and abs(float(samples.min()) + 0.5) < 1 / 64
    assert abs(float(samples.mean())) < 1 / 64


@pytest.mark.parametrize("freq", [250.0, 1000.0, 3000.0])
def test_sine_peaks_in_the_expected_mel_bin(freq):
    features = load_audio(wav_bytes(tone([freq], seconds=3.0, rate=16_000), 16_000))
    for clip in range(3):
        assert abs(peak_bin(features, clip) - expected_mel_bin(freq)) <= 1


def test_multichannel_reads_channel_zero_only():
    left = tone([700.0], seconds=3.0, rate=16_000)[0]
    stereo = load_audio(wav_bytes(np.stack([left, -left]), 16_000))  # averaging would cancel
    mono = load_audio(wav_bytes(left[None], 16_000))
    assert torch.allclose(stereo, mono, atol=1e-3)


def test_clip_bounds_follow_the_rule():
    # D = 5 s: starts i * (5 - 2) / 3 = 0, 1, 2 s; the divisor is 3, not 2.
    assert clip_bounds(80_000) == [(0, 32_000), (16_000, 48_000), (32_000, 64_000)]
    # D = 3 s: starts 0, 1/3, 2/3 s, truncated to whole samples.
    assert clip_bounds(48_000) == [(0, 32_000), (5_333, 37_333), (10_666, 42_666)]
    # D < 2 s: three copies of [0, 2 s), cut by the end of the waveform.
    assert clip_bounds(16_000) == [(0, 32_000)] * 3


def test_mean_subtraction_leaks_into_overlapping_clips():
    rate = 16_000
    rng = np.random.default_rng(0)
    waveform = 0.1 * rng.standard_normal(3 * rate)
    waveform[: 2 * rate] += 0.4  # DC offset in the first clip only
    data = wav_bytes(waveform[None], rate)
    got = load_audio(data)

    samples = decode_audio(data)[0]
    pristine = samples.clone()
    leaked, fresh = [], []
    for first, stop in clip_bounds(samples.shape[1]):
        fresh_clip = pristine[:, first:stop]
        fresh.append(waveform_to_fbank(fresh_clip - fresh_clip.mean()))
        view = samples[:, first:stop]
        view -= view.mean()
        leaked.append(waveform_to_fbank(view))
    assert torch.equal(got, torch.stack(leaked))
    assert not torch.allclose(got[1], fresh[1], atol=1e-3)  # the quirk is visible


def test_one_second_gives_three_identical_clips():
    features = load_audio(wav_bytes(tone([500.0], seconds=1.0, rate=16_000), 16_000))
    assert features.shape == SHAPE
    assert torch.allclose(features[0], features[1], atol=1e-5)
    assert torch.allclose(features[0], features[2], atol=1e-5)
    assert torch.all(features[:, :, :, 98:] == PAD_VALUE)  # 1 s = 98 frames


def test_clip_shorter_than_one_window_gives_one_frame():
    features = load_audio(wav_bytes(tone([500.0], seconds=0.01, rate=16_000), 16_000))  # 10 ms
    assert features.shape == SHAPE and torch.isfinite(features).all()
    assert torch.all(features[:, :, :, 1:] == PAD_VALUE)
    assert not torch.all(features[:, :, :, 0] == PAD_VALUE)


def test_a_single_sample_works():
    features = load_audio(wav_bytes(np.array([[0.25]]), 44_100))
    assert features.shape == SHAPE and torch.isfinite(features).all()


# --- bad input -------------------------------------------------------------------


def _valid_wav() -> bytes:
    return wav_bytes(tone([440.0], seconds=1.0, rate=16_000), 16_000)


def _valid_flac() -> bytes:
    return encode_audio(tone([440.0], seconds=1.0, rate=16_000), 16_000, "flac", "flac")


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "audio file is empty (0 bytes)"),
        (_valid_wav()[:100], "audio file is truncated"),
        (wav_bytes(np.zeros((1, 0)), 16_000), "audio is empty (0 samples)"),
        (png_bytes(), "no audio stream"),
        (np.random.default_rng(1).bytes(4096), "not a decodable audio file"),
        (b"RIFF\x00\x00", "not a decodable audio file"),
        (_valid_flac()[:100], "not a decodable audio file"),
    ],
    ids=["empty", "truncated-wav", "zero-samples", "png", "random", "riff-stub", "cut-flac"],
)
def test_bad_input_raises_media_error(data, message):
    with pytest.raises(MediaError, match="^" + re.escape(message)):
        load_audio(data)


def test_video_without_sound_has_no_audio_stream():
    video = encode_video(indexed_frames(4, 32, 32), fps=4)
    with pytest.raises(MediaError, match=r"^no audio stream$"):
        load_audio(video)


def test_decoding_processes_give_the_thread_result_on_one_torch_thread_each():
    from ib_vectorizer.modalities import Modality
    from ib_vectorizer.model import get_config
    from ib_vectorizer.preprocess import Preprocessor
    from ib_vectorizer.preprocess.processes import DecodingProcesses

    preprocessor = Preprocessor.for_model(get_config("imagebind_huge"))
    wav = wav_bytes(tone([440.0], 3.0, 16_000), 16_000)
    processes = DecodingProcesses(2)
    try:
        in_process = processes.load_item(preprocessor, Modality.AUDIO, wav)
        assert torch.equal(in_process, preprocessor.load_item(Modality.AUDIO, wav))
        # One thread each: torch's default (one per core) oversubscribes the machine.
        assert processes._pool.submit(torch.get_num_threads).result() == 1
    finally:
        processes.close()
