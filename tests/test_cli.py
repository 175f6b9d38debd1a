"""``ib-vectorizer embed`` end to end: raw files in, the reference's vectors out."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from .fixture_data import FIXTURE, INPUTS

CONFIG = FIXTURE / "config.json"
WEIGHTS = FIXTURE / "state_dict.pt"
TINY = ["--model", str(CONFIG), "--checkpoint", str(WEIGHTS)]
# Video is decoded by a different build of FFmpeg than the reference's, so a
# frame may round differently: a looser bound for video.
MIN_COSINE = {"video": 0.999}


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ib_vectorizer", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "IB_LOG_LEVEL": "WARNING", **(env or {})},
    )


def embed(tmp_path: Path, modality: str, inputs: list[str], *extra: str) -> np.ndarray:
    out = tmp_path / f"{modality}.npy"
    result = run_cli(
        "embed",
        "--modality",
        modality,
        *TINY,
        "--output",
        str(out),
        *extra,
        *inputs,
    )
    assert result.returncode == 0, result.stderr
    return np.load(out)


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


@pytest.mark.parametrize(
    "modality", ["vision", "text", "audio", "video", "depth", "thermal", "imu"]
)
def test_embed_matches_reference_from_raw_files(tmp_path, manifest, expected, texts, modality):
    inputs = texts if modality == "text" else [str(INPUTS / name) for name in manifest[modality]]
    raw = embed(tmp_path, modality, inputs, "--raw-scale", "--batch-size", "2")
    reference = expected[modality]
    assert raw.dtype == np.float32 and raw.shape == reference.shape
    assert cosine(raw, reference).min() >= MIN_COSINE.get(modality, 0.99999)
    np.testing.assert_allclose(
        np.linalg.norm(raw, axis=1), np.linalg.norm(reference, axis=1), rtol=1e-3
    )
    unit = embed(tmp_path, modality, inputs)
    np.testing.assert_allclose(np.linalg.norm(unit, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(unit, raw / np.linalg.norm(raw, axis=1, keepdims=True), atol=1e-5)


def test_model_and_checkpoint_come_from_environment(tmp_path, expected):
    out = tmp_path / "img.npy"
    result = run_cli(
        "embed",
        "--modality",
        "vision",
        "--raw-scale",
        "--output",
        str(out),
        str(INPUTS / "image_rgb.jpg"),
        env={"IB_MODEL": str(CONFIG), "IB_CHECKPOINT": str(WEIGHTS)},
    )
    assert result.returncode == 0, result.stderr
    np.testing.assert_allclose(np.load(out)[0], expected["vision"][0], atol=1e-4)


def test_undecodable_input_exits_2_naming_the_file_and_writes_nothing(tmp_path):
    bad = tmp_path / "broken.wav"
    bad.write_bytes(b"RIFF\x00\x00\x00\x00WAVEnot really")
    out = tmp_path / "out.npy"
    result = run_cli(
        "embed",
        "--modality",
        "audio",
        *TINY,
        "--output",
        str(out),
        str(INPUTS / "tone_16k_mono.wav"),
        str(bad),
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert str(bad) in lines[0] and "audio[1]" in lines[0] and "decodable" in lines[0]
    assert not out.exists()


def test_missing_input_file_exits_2(tmp_path):
    missing = tmp_path / "nope.png"
    result = run_cli(
        "embed",
        "--modality",
        "vision",
        *TINY,
        "--output",
        str(tmp_path / "o.npy"),
        str(missing),
    )
    assert result.returncode == 2
    assert str(missing) in result.stderr and "cannot read file" in result.stderr


def test_missing_checkpoint_says_what_to_run(tmp_path):
    result = run_cli(
        "embed",
        "--modality",
        "text",
        "--model",
        str(CONFIG),
        "--output",
        str(tmp_path / "o.npy"),
        "hello",
        env={"IB_CHECKPOINT": str(tmp_path / "absent.pth")},
    )
    assert result.returncode == 1
    assert "ib-vectorizer download" in result.stderr
    assert str(tmp_path / "absent.pth") in result.stderr


def test_int8_reaches_embed_by_flag_and_environment(tmp_path):
    texts = ["a dog on a beach", "rain on a tin roof"]
    float32 = embed(tmp_path, "text", texts)
    int8 = embed(tmp_path, "text", texts, "--quantize", "int8")
    assert not np.array_equal(float32, int8)  # the flag took the int8 path
    assert cosine(float32, int8).min() > 0.998
    out = tmp_path / "env.npy"
    result = run_cli(
        "embed", "--modality", "text", *TINY, "--output", str(out), *texts,
        env={"IB_QUANTIZE": "int8"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    np.testing.assert_array_equal(np.load(out), int8)


def test_image_decode_reaches_embed_by_flag_and_environment(tmp_path):
    from .test_preprocess_image import photo_jpeg

    photo = tmp_path / "photo.jpg"
    photo.write_bytes(photo_jpeg(4000, 3000))
    exact = embed(tmp_path, "vision", [str(photo)])
    fast = embed(tmp_path, "vision", [str(photo)], "--image-decode", "fast")
    assert not np.array_equal(exact, fast)  # the flag took the fast path
    assert cosine(exact, fast)[0] > 0.99
    out = tmp_path / "env.npy"
    result = run_cli(
        "embed", "--modality", "vision", *TINY, "--output", str(out), str(photo),
        env={"IB_IMAGE_DECODE": "fast"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    np.testing.assert_array_equal(np.load(out), fast)
