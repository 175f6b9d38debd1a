"""Limits that keep one hostile item from eating a server's memory or time."""

from __future__ import annotations

import io
import random
import re
import time

import numpy as np
import pytest
import torch
import torchaudio.functional as AF
from PIL import Image

from ib_vectorizer.embedder import Embedder, NonFiniteVectors
from ib_vectorizer.errors import DeadlinePassed, InputError, MediaError, MediaTooLong
from ib_vectorizer.modalities import Modality
from ib_vectorizer.preprocess import Preprocessor, audio, text, video
from ib_vectorizer.preprocess.audio import (
    ModelRateResampler,
    audio_cost,
    decode_audio,
    load_audio,
    resample_taps,
    resampling_rate,
)
from ib_vectorizer.preprocess.limits import MAX_ASPECT_RATIO, DecodeLimits
from ib_vectorizer.preprocess.text import collapse_whitespace, load_text
from ib_vectorizer.preprocess.video import load_video

from .hostile import float_wav_holding, imu_csv_holding, npy_claiming, png, tone_wav, wav
from .media import encode_audio, encode_video, indexed_frames, tone, wav_bytes

PREPROCESSOR = Preprocessor()


def test_audio_longer_than_the_limit_is_refused_before_it_is_all_decoded():
    data = wav_bytes(tone([440.0], seconds=3.0, rate=16_000), 16_000)
    assert load_audio(data, max_seconds=5).shape == (3, 1, 128, 204)
    with pytest.raises(MediaError, match="longer than the limit of 2 s"):
        load_audio(data, max_seconds=2)


def test_video_frames_over_the_pixel_limit_are_refused(monkeypatch):
    data = encode_video(indexed_frames(4, 64, 48), fps=4)
    monkeypatch.setattr(video, "MAX_FRAME_PIXELS", 64 * 48 - 1)
    with pytest.raises(MediaError, match="video frame is 64x48 pixels"):
        load_video(data)


def test_long_text_is_cut_where_it_cannot_change_the_77_tokens():
    normal = "a photo of a dog running on the beach at sunset " * 200  # ~10k characters
    assert torch.equal(load_text(normal), load_text(normal[: text.MAX_TEXT_CHARS]))
    assert torch.equal(load_text("x" * 100_000), load_text("x" * text.MAX_TEXT_CHARS))
    spaced = "a" + " " * 5000 + "dog"  # whitespace collapses before the cut
    assert torch.equal(load_text(spaced), load_text("a dog"))


def test_a_longer_context_keeps_proportionally_more_text():
    normal = "a photo of a dog running on the beach at sunset " * 200  # ~2200 tokens
    assert text.max_text_chars(512) > len(normal) > text.MAX_TEXT_CHARS
    ids = load_text(normal, context_length=512)
    uncut = text.clip_tokenizer()([normal.strip()], context_length=512)[0]
    assert torch.equal(ids, uncut) and ids[-1] == 49407 and (ids != 0).all()


def test_tokenizer_cache_stays_bounded(monkeypatch):
    monkeypatch.setattr(text, "MAX_CACHED_WORDS", 50)
    for i in range(30):
        load_text(" ".join(f"w{i}x{j}" for j in range(10)))
    assert len(text.clip_tokenizer().cache) <= 50 + 12


# -- pictures: shape and memory, from the header ------------------------------------------------


@pytest.mark.parametrize("modality", ["vision", "depth", "thermal"])
def test_pictures_longer_than_the_aspect_limit_are_refused_unread(modality):
    edge = int(MAX_ASPECT_RATIO)
    assert PREPROCESSOR.load_item(modality, png(edge, 1)).shape[-2:] == (224, 224)
    with pytest.raises(InputError, match=rf"{edge + 1}x1 pixels, {edge + 1} times longer"):
        PREPROCESSOR.load_item(modality, png(edge + 1, 1))
    with pytest.raises(InputError, match=r"1x50000 pixels"):
        PREPROCESSOR.inspect(modality, png(1, 50_000, rows=1))  # a header, and one row


def test_a_map_whose_decoding_needs_more_than_the_item_limit_is_refused_from_its_header():
    claim = png(11_000, 11_000, bits=16, rows=1)  # 103 bytes that claim 121 megapixels of 16 bits
    with pytest.raises(
        InputError, match=r"^depth\[0\]: a 11000x11000 I;16 PNG depth image needs about"
    ):
        PREPROCESSOR.load_item("depth", claim)
    small = Preprocessor(max_item_bytes=1 << 20)
    with pytest.raises(InputError, match=r"the limit is 1 MiB per item"):
        small.load_item("vision", png(2000, 1000))


def test_picture_estimates_cover_what_the_decoded_image_takes():
    out = io.BytesIO()
    Image.new("RGB", (3000, 2000)).save(out, format="JPEG")
    cost = PREPROCESSOR.inspect("vision", out.getvalue())
    assert 3000 * 2000 * 4 < cost.bytes < 3000 * 2000 * 8  # RGB is held as RGBX
    assert cost.what == "a 3000x2000 RGB JPEG image"
    fast = Preprocessor(image_decode="fast").inspect("vision", out.getvalue())
    assert fast.bytes < cost.bytes / 2  # decoded at a quarter of the size


# -- audio: sample rates, lengths, values --------------------------------------------------------


def test_rates_recorders_use_are_resampled_exactly_and_odd_ones_from_a_neighbour():
    for rate in (8000, 11025, 22050, 32000, 44056, 44100, 47952, 48000, 96000, 192000, 384000):
        assert resampling_rate(rate) == rate
    assert resample_taps(44100) == 76_000 and resample_taps(16_001) > 250_000_000
    assert resampling_rate(16_001) == 16_000
    assert resampling_rate(48_001) == 48_000
    assert abs(resampling_rate(999_983) - 999_983) <= 9_999
    assert resample_taps(resampling_rate(22_051)) <= audio.MAX_RESAMPLE_TAPS


def test_an_odd_rate_embeds_like_its_neighbour(monkeypatch):
    samples = np.round(tone([440.0], 3.0, 16_000) * 32767).astype(np.int16)
    assert torch.equal(load_audio(wav(samples, 16_001)), load_audio(wav(samples, 16_000)))
    monkeypatch.setattr(audio, "MAX_RESAMPLE_TAPS", 10)  # no rate within 1% has such a filter
    with pytest.raises(MediaError, match="sample rate of 22051 Hz"):
        load_audio(tone_wav(22_051))


@pytest.mark.parametrize("rate", [8000, 22050, 44100, 48000, 96000])
@pytest.mark.parametrize("channels", [1, 2])
def test_resampling_a_range_gives_torchaudios_values_there(rate, channels):
    rng = random.Random(rate + channels)
    waveform = torch.from_numpy(np.random.default_rng(rate).standard_normal((channels, 5 * rate)))
    waveform = waveform.float()
    whole = AF.resample(waveform, rate, 16_000)
    resampler = ModelRateResampler(waveform, rate)
    assert resampler.length == whole.shape[1]
    for _ in range(5):
        first = rng.randrange(0, whole.shape[1] - 1)
        stop = rng.randrange(first + 1, whole.shape[1] + 100)
        part = resampler.range(first, stop)
        # Equal; where the matrix product picks another kernel for a short input, to rounding.
        torch.testing.assert_close(part, whole[:, first:stop], atol=1e-6, rtol=0)


def test_audio_header_past_the_length_limit_is_refused_unread():
    long = wav_bytes(tone([440.0], seconds=3.0, rate=8_000), 8_000)
    with pytest.raises(MediaTooLong, match="limit of 2 s"):
        audio_cost(long, max_seconds=2)
    flac = encode_audio(tone([440.0, 550.0], 10.0, 48_000), 48_000, "flac", "flac")
    cost = audio_cost(flac, max_seconds=600)
    assert cost.what.startswith("10.0 s of 48000 Hz 2-channel flac")
    assert cost.bytes >= 10 * 48_000 * 2 * 8  # every sample held twice in float32


def test_a_stream_that_decodes_past_its_allowance_or_its_deadline_stops():
    flac = encode_audio(tone([440.0], 20.0, 48_000), 48_000, "flac", "flac")
    with pytest.raises(MediaError, match="decodes to more than its header says"):
        decode_audio(flac, limits=DecodeLimits(max_bytes=1 << 20))
    with pytest.raises(DeadlinePassed):
        decode_audio(flac, limits=DecodeLimits(deadline=time.monotonic() - 1))
    clip = encode_video(indexed_frames(8, 64, 48), fps=4)
    with pytest.raises(DeadlinePassed):
        load_video(clip, limits=DecodeLimits(deadline=time.monotonic() - 1))


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf"), 3e38])
def test_float_audio_that_cannot_make_a_finite_spectrum_is_refused(value):
    with pytest.raises(
        InputError, match=r"^audio\[0\]: audio samples are NaN, infinite or too large"
    ):
        PREPROCESSOR.load_item("audio", float_wav_holding(value))


# -- IMU, text ------------------------------------------------------------------------------------


def test_imu_reads_only_the_samples_the_model_takes():
    rows = ["0.1,0.2,0.3,0.4,0.5,0.6"] * 2000 + ["not,a,number,at,all,!"] * 10
    assert PREPROCESSOR.load_item("imu", "\n".join(rows).encode()).shape == (6, 2000)
    with pytest.raises(InputError, match="too large for float32"):
        PREPROCESSOR.load_item("imu", imu_csv_holding("1e39"))
    with pytest.raises(InputError, match=r"\.npy header claims \(6, 5000000000\)"):
        PREPROCESSOR.load_item("imu", npy_claiming((6, 5_000_000_000)))


def test_whitespace_is_collapsed_without_reading_past_what_is_kept():
    rng = random.Random(5)
    pieces = ["a", "bc", " ", "\n\t", "  ", "\u3000", "é"]
    for _ in range(3000):
        sample = "".join(rng.choice(pieces) for _ in range(rng.randrange(30)))
        for limit in (0, 1, 4, 9, 40):
            assert collapse_whitespace(sample, limit) == re.sub(r"\s+", " ", sample)[:limit]
    assert PREPROCESSOR.inspect("text", "x" * 10_000_000).bytes < 1 << 20


# -- nothing non-finite leaves the model ---------------------------------------------------------


def test_input_that_overflows_the_models_dtype_fails_only_its_own_row(tiny_model):
    half = Embedder(tiny_model.half())
    try:
        batch = torch.zeros(3, 6, 2000)
        batch[1, 2, 10] = 1e6  # finite in float32, infinite in float16
        with pytest.raises(NonFiniteVectors) as info:
            half.embed_tensors(Modality.IMU, batch)
        assert info.value.reasons == {1: "its values overflow the model's float16"}
        assert torch.isfinite(info.value.vectors[[0, 2]]).all()
        rows = "\n".join(["0,0,0,0,0,0"] * 10 + ["0,0,1e6,0,0,0"])
        with pytest.raises(InputError, match=r"^imu\[1\]: its values overflow"):
            half.embed("imu", [b"0,0,0,0,0,0\n" * 10, rows.encode()])
    finally:
        tiny_model.float()


def test_a_loader_that_gives_a_non_finite_input_is_caught(monkeypatch):
    import ib_vectorizer.preprocess as preprocess

    monkeypatch.setattr(preprocess, "load_image", lambda *_: torch.full((3, 224, 224), np.nan))
    with pytest.raises(InputError, match=r"^vision\[0\]: its vision input is not finite"):
        PREPROCESSOR.load_item("vision", png(300, 200))
