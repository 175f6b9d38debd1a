"""The model config decides the preprocessing: another geometry end to end, and refusals.

The tiny fixture model is rebuilt with every input size changed (112 px
images, 32 text tokens, 64 × 100 fbanks, 4 frames per video clip, 1000 IMU
samples) and random weights; raw fixture files must come out in exactly those
shapes, by the same rules, and embed. Configs preprocessing cannot follow are
refused, naming the field, before anything is embedded.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms

from ib_vectorizer.embedder import Embedder
from ib_vectorizer.model import ImageBindConfig, create_model, get_config
from ib_vectorizer.preprocess import PreprocessConfig, Preprocessor
from ib_vectorizer.preprocess.config import IMAGEBIND_HUGE
from ib_vectorizer.preprocess.constants import CLIP_MEAN, CLIP_STD

from .fixture_data import FIXTURE, INPUTS
from .media import colour_index, encode_video, indexed_frames, tone, wav_bytes

MODALITIES = ["vision", "text", "audio", "video", "depth", "thermal", "imu"]
GEOMETRY = {
    "image_size": 112,
    "context_length": 32,
    "audio_num_mel_bins": 64,
    "audio_target_len": 100,
    "video_frames": 4,
    "imu_samples": 1000,
}
ITEM_SHAPES = {
    "vision": (3, 112, 112),
    "text": (32,),
    "audio": (3, 1, 64, 100),
    "video": (15, 3, 4, 112, 112),
    "depth": (1, 112, 112),
    "thermal": (1, 112, 112),
    "imu": (6, 1000),
}
SOT, EOT = 49406, 49407


def tiny_config(**changes) -> dict:
    return {**json.loads((FIXTURE / "config.json").read_text()), **changes}


@pytest.fixture(scope="module")
def config_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("geometry") / "config.json"
    path.write_text(json.dumps(tiny_config(**GEOMETRY)))
    return path


@pytest.fixture(scope="module")
def config(config_path) -> ImageBindConfig:
    return ImageBindConfig.from_json(config_path)


@pytest.fixture(scope="module")
def embedder(config) -> Embedder:
    return Embedder(create_model(config, random_seed=0))


@pytest.fixture(scope="module")
def preprocessor(embedder) -> Preprocessor:
    return embedder.preprocessor


def raw_items(manifest: dict, texts: list[str], modality: str) -> list[bytes | str]:
    if modality == "text":
        return texts
    return [(INPUTS / name).read_bytes() for name in manifest[modality]]


# --- another geometry, end to end ---------------------------------------------------


def test_the_preprocessor_takes_its_geometry_from_the_model(config, preprocessor):
    assert preprocessor.config == PreprocessConfig(**GEOMETRY)
    assert preprocessor == Preprocessor.for_model(config)


@pytest.mark.parametrize("modality", MODALITIES)
def test_raw_files_embed_in_the_model_geometry(embedder, manifest, texts, modality):
    items = raw_items(manifest, texts, modality)
    batch = embedder.preprocessor.load_batch(modality, items)
    assert tuple(batch.shape) == (len(items), *ITEM_SHAPES[modality])
    assert embedder.example_batch(modality, 2).shape == (2, *ITEM_SHAPES[modality])
    vectors = embedder.embed(modality, items, batch_size=2)
    assert vectors.shape == (len(items), 32) and np.isfinite(vectors).all()
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(vectors, embedder.embed_tensors(modality, batch), atol=1e-5)


def test_warm_up_runs_every_modality_in_the_model_geometry(embedder):
    embedder.warm_up()


def test_images_follow_the_reference_rule_at_the_model_size(preprocessor, manifest):
    rule = transforms.Compose(
        [
            transforms.Resize(112, interpolation=transforms.InterpolationMode.BICUBIC),
            transforms.CenterCrop(112),
            transforms.ToTensor(),
            transforms.Normalize(CLIP_MEAN, CLIP_STD),
        ]
    )
    for name in manifest["vision"]:
        data = (INPUTS / name).read_bytes()
        expected = rule(Image.open(io.BytesIO(data)).convert("RGB"))
        assert torch.equal(preprocessor.load_item("vision", data), expected), name


def test_long_text_is_cut_to_the_context_length_keeping_end_of_text(preprocessor):
    ids = preprocessor.load_item("text", "word " * 200)
    assert ids.shape == (32,) and ids[0] == SOT and ids[-1] == EOT and ids.argmax() == 31
    # The same tokens as the 77-token cut, up to where the shorter context ends.
    assert torch.equal(ids[:31], Preprocessor().load_item("text", "word " * 200)[:31])
    short = preprocessor.load_item("text", "a dog")
    assert short[0] == SOT and short[3] == EOT and (short[4:] == 0).all()


def test_imu_is_padded_and_cut_to_imu_samples(preprocessor):
    for name, rows in [("imu_1500.csv", 1500), ("imu_3000.csv", 3000)]:
        table = np.loadtxt(INPUTS / name, delimiter=",", skiprows=1)
        assert table.shape == (rows, 6)
        got = preprocessor.load_item("imu", (INPUTS / name).read_bytes())
        assert got.shape == (6, 1000)
        np.testing.assert_allclose(got.numpy(), table[:1000].T.astype(np.float32))


def test_audio_fbank_has_the_model_mel_bins_and_frames(preprocessor):
    data = wav_bytes(tone([1000.0], seconds=3.0, rate=16_000), 16_000)
    features = preprocessor.load_item("audio", data)
    assert features.shape == (3, 1, 64, 100)
    # A 2 s clip has 198 frames: 100 is a cut of the same features, not another scale.
    longer_fbank = replace(IMAGEBIND_HUGE, audio_num_mel_bins=64, audio_target_len=300)
    longer = Preprocessor(longer_fbank)
    uncut = longer.load_item("audio", data)
    assert torch.equal(features, uncut[..., :100])
    assert torch.all(uncut[..., 198:] == uncut[0, 0, 0, -1])  # padding only past the clip
    # 1 kHz falls in the mel bin whose centre is nearest it on a 64-bin HTK scale.
    mel = 1127.0 * np.log1p(np.array([20.0, 8000.0, 1000.0]) / 700.0)
    centres = mel[0] + np.arange(1, 65) * (mel[1] - mel[0]) / 65
    peak = int(features[0, 0].mean(dim=1).argmax())
    assert abs(peak - int(np.argmin(abs(centres - mel[2])))) <= 1


def test_video_takes_video_frames_per_clip_at_linspace(preprocessor):
    # D = 7 s at 8 fps: clip k holds frames 8k .. 8k + 15 (T = 16), so the four
    # frames are 8k + long(linspace(0, 15, 4)) = 8k + 0, 5, 10, 15.
    video = preprocessor.load_item("video", encode_video(indexed_frames(56, 64, 48), fps=8))
    assert video.shape == (15, 3, 4, 112, 112)
    mean = torch.tensor(CLIP_MEAN).view(3, 1, 1)
    std = torch.tensor(CLIP_STD).view(3, 1, 1)
    for clip in range(5):
        for crop in range(3):
            view = video[3 * clip + crop]
            pixels = [((view[:, t] * std + mean) * 255).mean(dim=(1, 2)) for t in range(4)]
            picked = [colour_index(rgb.numpy()) for rgb in pixels]
            assert picked == [8 * clip + offset for offset in (0, 5, 10, 15)]


def test_the_cli_embeds_with_the_model_geometry(config_path, embedder, tmp_path):
    image = INPUTS / "image_rgb.jpg"
    out = tmp_path / "out.npy"
    command = ["embed", "--modality", "vision", "--model", str(config_path), "--random-weights"]
    result = subprocess.run(
        [sys.executable, "-m", "ib_vectorizer", *command, "--output", str(out), str(image)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "IB_LOG_LEVEL": "WARNING", "IB_DEVICE": "cpu"},
    )
    assert result.returncode == 0, result.stderr
    vectors = np.load(out)
    assert vectors.shape == (1, 32)
    np.testing.assert_allclose(vectors, embedder.embed("vision", [image.read_bytes()]), atol=1e-5)


# --- imagebind_huge's geometry --------------------------------------------------------


def test_the_default_geometry_is_imagebind_huge():
    assert PreprocessConfig.from_model(ImageBindConfig()) == IMAGEBIND_HUGE
    assert IMAGEBIND_HUGE.image_size == 224 and IMAGEBIND_HUGE.context_length == 77
    assert Preprocessor() == Preprocessor.for_model(get_config("imagebind_huge"))


@pytest.mark.parametrize("modality", ["vision", "text", "depth", "thermal", "imu"])
def test_imagebind_huge_geometry_gives_the_reference_inputs(
    manifest, texts, preprocessed, modality
):
    batch = Preprocessor().load_batch(modality, raw_items(manifest, texts, modality))
    assert np.array_equal(batch.numpy(), preprocessed[modality])  # audio, video: own tests


def test_the_preprocessor_pickles(preprocessor):
    copy = pickle.loads(pickle.dumps(preprocessor))
    assert copy == preprocessor
    data = (INPUTS / "image_gray.png").read_bytes()
    assert torch.equal(copy.load_item("vision", data), preprocessor.load_item("vision", data))


# --- configs preprocessing cannot follow ------------------------------------------------

REFUSED = [
    ({"imu_channels": 3}, r"imu_channels must be 6, not 3: the IMU CSV and \.npy formats"),
    ({"vocab_size": 32000}, r"vocab_size must be 49408, not 32000: .*CLIP BPE vocabulary"),
    ({"image_size": 120}, r"image_size \(120\) must be a multiple of kernel_size\[1:\] \(14\)"),
    ({"image_size": 126}, r"image_size \(126\) must be a multiple of depth_kernel_size \(16\)"),
    ({"kernel_size": [2, 14, 16]}, r"kernel_size\[1:\] must be a square patch, not 14x16"),
    ({"video_frames": 3}, r"video_frames \(3\) must be a multiple of kernel_size\[0\] \(2\)"),
    ({"imu_samples": 1001}, r"imu_samples \(1001\) must be a multiple of imu_kernel_size \(8\)"),
    ({"audio_target_len": 8}, r"audio_target_len \(8\) must be at least audio_kernel_size"),
    ({"context_length": 1}, r"context_length must be at least 2, not 1: .*end-of-text"),
]


@pytest.mark.parametrize(("changes", "message"), REFUSED, ids=[next(iter(c)) for c, _ in REFUSED])
def test_a_config_preprocessing_cannot_follow_is_refused(changes, message):
    config = ImageBindConfig.from_dict(tiny_config(**changes))
    with pytest.raises(ValueError, match=message):
        Preprocessor.for_model(config)


@pytest.mark.parametrize(("changes", "message"), REFUSED, ids=[next(iter(c)) for c, _ in REFUSED])
def test_the_embedder_refuses_it_before_embedding_anything(changes, message):
    model = create_model(ImageBindConfig.from_dict(tiny_config(**changes)), random_seed=0)
    with pytest.raises(ValueError, match=message):
        Embedder(model)


def test_every_refused_field_is_named_at_once():
    config = ImageBindConfig.from_dict(tiny_config(imu_channels=9, vocab_size=100))
    with pytest.raises(ValueError, match="imu_channels") as info:
        Preprocessor.for_model(config)
    assert "vocab_size" in str(info.value)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"image_size": 0}, r"image_size must be at least 1, not 0"),
        ({"image_size": 112.0}, r"image_size must be a whole number, not 112\.0"),
        ({"audio_num_mel_bins": 3}, r"audio_num_mel_bins must be at least 4, not 3"),
        ({"imu_samples": True}, r"imu_samples must be a whole number, not True"),
    ],
)
def test_a_geometry_that_cannot_be_produced_is_refused(changes, message):
    with pytest.raises(ValueError, match=message):
        replace(IMAGEBIND_HUGE, **changes)
