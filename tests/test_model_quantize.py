"""int8 trunks on the CPU: which layers change, how close the embeddings stay, what is refused."""

from __future__ import annotations

import os
import shutil

import pytest
import torch
from torch import nn

from ib_vectorizer.model import create_model, factory, quantize
from ib_vectorizer.model.attention import MultiheadSelfAttention
from ib_vectorizer.model.quantize import Int8Linear, quantize_int8

from .fixture_data import FIXTURE

# The bound the README documents: int8 against float32, lowest cosine per item.
INT8_MIN_COSINE = 0.998
MODALITIES = ["vision", "text", "audio", "depth", "thermal", "imu", "video"]


@pytest.fixture(scope="module")
def int8_model():
    return create_model(
        FIXTURE / "config.json", checkpoint=FIXTURE / "state_dict.pt", quantize="int8"
    )


@pytest.mark.parametrize("modality", MODALITIES)
def test_int8_embeddings_stay_within_the_documented_cosine(
    tiny_model, int8_model, preprocessed, modality
):
    encoder = "vision" if modality == "video" else modality
    inputs = torch.from_numpy(preprocessed[modality])
    exact = tiny_model.embed(encoder, inputs)
    int8 = int8_model.embed(encoder, inputs)
    assert int8.dtype == torch.float32 and int8.shape == exact.shape
    cosine = nn.functional.cosine_similarity(int8, exact)
    assert cosine.min().item() >= INT8_MIN_COSINE
    assert not torch.equal(int8, exact)  # the int8 kernels ran


def test_every_trunk_projection_is_int8_and_stems_and_heads_are_not(int8_model):
    trunks = int8_model.modality_trunks
    for name, trunk in trunks.items():
        for attention in (m for m in trunk.modules() if isinstance(m, MultiheadSelfAttention)):
            assert isinstance(attention.in_proj, Int8Linear), name
            assert isinstance(attention.out_proj, Int8Linear), name
            assert not hasattr(attention, "in_proj_weight")
        assert not any(type(m) is nn.Linear for m in trunk.modules()), name
    assert any(type(m) is nn.Linear for m in int8_model.modality_heads.modules())
    int8_count = sum(isinstance(m, Int8Linear) for m in int8_model.modules())
    blocks = sum(len(trunk.blocks) for trunk in trunks.values())
    assert int8_count == 4 * blocks  # in_proj, out_proj, fc1, fc2


def test_int8_linear_matches_float_within_rounding():
    torch.manual_seed(0)
    linear = nn.Linear(96, 40)
    x = torch.randn(3, 7, 96)
    out = Int8Linear.from_linear(linear)(x)
    assert out.shape == (3, 7, 40)
    expected = linear(x)
    assert (out - expected).abs().max().item() < 0.05 * expected.abs().max().item()


def test_int8_needs_a_float32_model_on_the_cpu():
    model = create_model(FIXTURE / "config.json", random_seed=0, dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="int8 runs on the CPU in float32; this model is"):
        quantize_int8(model)
    with pytest.raises(ValueError, match="quantize must be one of none, int8, not 'int4'"):
        create_model(FIXTURE / "config.json", random_seed=0, quantize="int4")


# --------------------------------------------------------------------------- the kept int8 file


@pytest.fixture
def checkpoint(tmp_path, monkeypatch):
    """A copy of the fixture checkpoint whose int8 weights are kept (as a large one's are)."""
    monkeypatch.setattr(quantize, "KEEP_FROM_BYTES", 0)
    path = tmp_path / "weights.pt"
    shutil.copyfile(FIXTURE / "state_dict.pt", path)
    return path


def int8_vectors(path, preprocessed) -> dict[str, torch.Tensor]:
    model = create_model(FIXTURE / "config.json", checkpoint=path, quantize="int8")
    return {
        encoder: model.embed(encoder, torch.from_numpy(preprocessed[encoder]))
        for encoder in ("vision", "text", "audio", "imu")
    }


def test_a_second_int8_load_reads_the_kept_weights_and_gives_the_same_vectors(
    checkpoint, preprocessed, monkeypatch
):
    first = int8_vectors(checkpoint, preprocessed)
    kept = checkpoint.with_name("weights.pt.int8")
    assert kept.is_file()

    def no_quantizing(model):
        raise AssertionError("quantized again although the int8 weights were kept")

    monkeypatch.setattr(factory, "quantize_int8", no_quantizing)
    second = int8_vectors(checkpoint, preprocessed)
    for encoder, vectors in first.items():
        assert torch.equal(second[encoder], vectors), encoder


def test_a_changed_checkpoint_is_quantized_again(checkpoint, preprocessed):
    state = torch.load(checkpoint, weights_only=True)
    torch.save(state, checkpoint)  # written as the changed one will be: the same size
    old = int8_vectors(checkpoint, preprocessed)
    kept = checkpoint.with_name("weights.pt.int8")
    written = kept.stat().st_mtime_ns
    # Other weights of the same size, with the old file's times (as `cp -p` leaves them).
    times = checkpoint.stat()
    for tensor in state.values():
        if tensor.is_floating_point():
            tensor.mul_(1.5)
    torch.save(state, checkpoint)
    os.utime(checkpoint, ns=(times.st_atime_ns, times.st_mtime_ns))
    assert checkpoint.stat().st_size == times.st_size

    new = int8_vectors(checkpoint, preprocessed)
    assert kept.stat().st_mtime_ns != written  # quantized again and kept anew
    fresh = quantize_int8(create_model(FIXTURE / "config.json", checkpoint=checkpoint))
    for encoder, vectors in new.items():
        assert not torch.equal(vectors, old[encoder]), encoder
        inputs = torch.from_numpy(preprocessed[encoder])
        assert torch.equal(vectors, fresh.embed(encoder, inputs)), encoder


def test_an_unreadable_kept_file_is_made_again(checkpoint, preprocessed):
    first = int8_vectors(checkpoint, preprocessed)
    kept = checkpoint.with_name("weights.pt.int8")
    kept.write_bytes(kept.read_bytes()[:1000])
    again = int8_vectors(checkpoint, preprocessed)
    assert torch.equal(again["vision"], first["vision"])
    assert kept.stat().st_size > 1000


def test_int8_loads_where_nothing_can_be_kept(checkpoint, preprocessed, monkeypatch, caplog):
    def refuse(**kwargs):
        raise PermissionError("read-only file system")

    monkeypatch.setattr(quantize.tempfile, "mkstemp", refuse)
    vectors = int8_vectors(checkpoint, preprocessed)
    assert not checkpoint.with_name("weights.pt.int8").exists()
    assert "cannot keep the weights beside the checkpoint" in caplog.text
    assert vectors["text"].shape[1] == 32


def test_small_checkpoints_are_not_kept(tmp_path):
    path = tmp_path / "weights.pt"
    shutil.copyfile(FIXTURE / "state_dict.pt", path)
    create_model(FIXTURE / "config.json", checkpoint=path, quantize="int8")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["weights.pt"]
