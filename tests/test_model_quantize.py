"""int8 trunks on the CPU: which layers change, how close the embeddings stay, what is refused."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ib_vectorizer.model import create_model
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
