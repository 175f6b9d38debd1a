"""Limits that keep one hostile item from eating a server's memory or time."""

from __future__ import annotations

import pytest
import torch

from ib_vectorizer.errors import MediaError
from ib_vectorizer.preprocess import text, video
from ib_vectorizer.preprocess.audio import load_audio
from ib_vectorizer.preprocess.text import load_text
from ib_vectorizer.preprocess.video import load_video

from .media import encode_video, indexed_frames, tone, wav_bytes


def test_audio_longer_than_the_limit_is_refused_before_it_is_all_decoded():
    data = wav_bytes(tone([440.0], seconds=3.0, rate=16_000), 16_000)
    assert load_audio(data, max_seconds=5).shape == (3, 1, 128, 204)
    with pytest.raises(MediaError, match="longer than the limit of 2 s"):
        load_audio(data, max_seconds=2)


def test_video_frames_over_the_pixel_limit_are_refused(monkeypatch):
    data = encode_video(indexed_frames(4, 64, 48), fps=4)
    monkeypatch.setattr(video, "MAX_FRAME_PIXELS", 64 * 48 - 1)
    with pytest.raises(MediaError, match="video frames are 64x48"):
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
