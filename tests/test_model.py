"""The network: checkpoint layout, parity with the reference, precision, laziness."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from ib_vectorizer.model import ImageBindConfig, build_model, create_model, get_config
from ib_vectorizer.model.config import preset_names

from .fixture_data import FIXTURE, HUGE_SHAPES, SCALES

MODALITIES = ["vision", "text", "audio", "depth", "thermal", "imu", "video"]


def encoder_of(modality: str) -> str:
    return "vision" if modality == "video" else modality


def test_imagebind_huge_has_every_checkpoint_key_with_its_shape():
    model = build_model(get_config("imagebind_huge"), device="meta")
    ours = {key: list(t.shape) for key, t in model.state_dict().items()}
    reference = json.loads(HUGE_SHAPES.read_text())
    assert len(reference) == 1311
    assert sorted(set(reference) - set(ours)) == []
    assert sorted(set(ours) - set(reference)) == []
    mismatched = {k: (ours[k], reference[k]) for k in reference if ours[k] != reference[k]}
    assert mismatched == {}
    params = sum(t.numel() for t in model.state_dict().values())
    assert 1.1e9 < params < 1.3e9


def test_presets_are_data_files():
    assert "imagebind_huge" in preset_names()
    assert get_config("imagebind_huge") == ImageBindConfig()


def test_config_from_reference_constructor_arguments():
    config = get_config(FIXTURE / "config.json")
    assert config.vision_embed_dim == 64 and config.text_num_heads == 4
    assert config.out_embed_dim == 32
    assert config.image_size == 224  # not listed, so the reference default


def test_unknown_config_field_is_an_error(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"vision_embed_dimm": 8}))
    with pytest.raises(ValueError, match="vision_embed_dimm"):
        get_config(path)


def test_unknown_model_name_lists_presets():
    with pytest.raises(ValueError, match="imagebind_huge"):
        get_config("imagebind_tiny_nonexistent")


def test_checkpoint_that_does_not_fit_is_rejected(tmp_path):
    state = torch.load(FIXTURE / "state_dict.pt", weights_only=True)
    del state["modality_heads.imu.3.weight"]
    path = tmp_path / "broken.pt"
    torch.save(state, path)
    with pytest.raises(ValueError, match=r"modality_heads\.imu\.3\.weight"):
        create_model(FIXTURE / "config.json", checkpoint=path)


@pytest.mark.parametrize("modality", MODALITIES)
def test_raw_scale_parity_with_reference(tiny_model, preprocessed, expected, modality):
    inputs = torch.from_numpy(preprocessed[modality])
    out = tiny_model.embed(encoder_of(modality), inputs, normalize=False).numpy()
    assert out.shape == expected[modality].shape
    assert np.abs(out - expected[modality]).max() <= 1e-4 * SCALES[modality]


@pytest.mark.parametrize("modality", MODALITIES)
def test_default_output_is_unit_vectors_along_reference(
    tiny_model, preprocessed, expected, modality
):
    out = tiny_model.embed(encoder_of(modality), torch.from_numpy(preprocessed[modality])).numpy()
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    reference = expected[modality] / np.linalg.norm(expected[modality], axis=1, keepdims=True)
    np.testing.assert_allclose(out, reference, atol=1e-5)


def test_text_scale_is_read_from_checkpoint(tiny_model):
    assert tiny_model.logit_scale("text") == pytest.approx(42.0, rel=1e-5)
    assert tiny_model.logit_scale("audio") == pytest.approx(20.0)
    assert tiny_model.logit_scale("vision") == 1.0


def test_batch_results_do_not_depend_on_batch_neighbours(tiny_model, preprocessed):
    batch = torch.from_numpy(preprocessed["audio"])
    together = tiny_model.embed("audio", batch)
    alone = torch.cat([tiny_model.embed("audio", batch[i : i + 1]) for i in range(len(batch))])
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=0)


def test_only_the_requested_encoder_runs(tiny_model, preprocessed):
    calls: list[str] = []
    hooks = [
        trunk.register_forward_hook(lambda *_, name=name: calls.append(name))
        for name, trunk in tiny_model.modality_trunks.items()
    ]
    try:
        tiny_model.embed("imu", torch.from_numpy(preprocessed["imu"]))
        tiny_model({"text": torch.from_numpy(preprocessed["text"])})
    finally:
        for hook in hooks:
            hook.remove()
    assert calls == ["imu", "text"]


def test_bfloat16_autocast_stays_close_to_float32(tiny_model, preprocessed):
    for modality in ["vision", "text", "audio", "imu"]:
        inputs = torch.from_numpy(preprocessed[modality])
        reference = tiny_model.embed(encoder_of(modality), inputs)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = tiny_model.embed(encoder_of(modality), inputs)
        assert low.dtype == torch.float32
        cosine = torch.nn.functional.cosine_similarity(low, reference)
        assert cosine.min() > 0.99, (modality, cosine)


def test_random_weights_give_finite_distinct_vectors(preprocessed):
    model = create_model(FIXTURE / "config.json", random_seed=0)
    out = model.embed("vision", torch.from_numpy(preprocessed["vision"]))
    assert torch.isfinite(out).all()
    assert not torch.allclose(out[0], out[1])
    with pytest.raises(ValueError, match="exactly one"):
        create_model(FIXTURE / "config.json")


def test_an_image_embeds_like_the_clip_of_its_repeated_frames(tiny_model, preprocessed):
    # Images take a 2-D conv with the time-summed kernel; clips the 3-D conv.
    images = torch.from_numpy(preprocessed["vision"])
    as_clips = images.unsqueeze(2).repeat(1, 1, 2, 1, 1)
    torch.testing.assert_close(
        tiny_model.embed("vision", images), tiny_model.embed("vision", as_clips), atol=1e-6, rtol=0
    )
