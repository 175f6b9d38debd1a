"""One vocabulary of modalities: users write ``image`` (``vision`` too) everywhere.

The CLI's ``--modality`` flags, the :class:`Embedder` and the preprocessor take
a :class:`Modality` or any name :meth:`Modality.parse` reads; an unknown name is
an error listing the valid ones; one bare text or bytes where a list belongs is
a TypeError, not its characters embedded one by one.
"""

from __future__ import annotations

import numpy as np
import pytest

from ib_vectorizer.cli import main
from ib_vectorizer.embedder import Embedder
from ib_vectorizer.modalities import Modality

from .fixture_data import INPUTS
from .server_process import TINY_ENV

JPEG = INPUTS / "image_rgb.jpg"
VALID = "image, text, audio, video, depth, thermal, imu"


@pytest.fixture
def tiny_env(monkeypatch):
    for name, value in TINY_ENV.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("IB_LOG_LEVEL", "WARNING")


@pytest.fixture(scope="module")
def embedder(tiny_model) -> Embedder:
    return Embedder(tiny_model)


@pytest.fixture(scope="module")
def jpeg() -> bytes:
    return JPEG.read_bytes()


# --------------------------------------------------------------------------------------- CLI


def test_embed_command_takes_image_and_vision_alike(tmp_path, tiny_env):
    vectors = {}
    for name in ("image", "vision", "IMAGE", "images"):
        out = tmp_path / f"{name}.npy"
        assert main(["embed", "--modality", name, "--output", str(out), str(JPEG)]) == 0
        vectors[name] = np.load(out)
    assert vectors["image"].shape[0] == 1
    for name in ("vision", "IMAGE", "images"):
        np.testing.assert_array_equal(vectors[name], vectors["image"])


@pytest.mark.parametrize("name", ["image", "vision"])
def test_classify_command_takes_image_and_vision(tmp_path, tiny_env, capsys, name):
    labels = tmp_path / "labels.txt"
    labels.write_text("cat\ndog\n")
    args = ["classify", "--modality", name, "--labels", str(labels), "--json", str(JPEG)]
    assert main(args) == 0
    assert '"input"' in capsys.readouterr().out


@pytest.mark.parametrize(
    "flags", [["embed", "--output", "x.npy"], ["classify", "--labels", "labels.txt"]]
)
def test_an_unknown_modality_is_refused_with_the_valid_names(tmp_path, capsys, flags):
    command, flag, name = flags
    args = [command, "--modality", "picture", flag, str(tmp_path / name), str(JPEG)]
    with pytest.raises(SystemExit) as stopped:
        main(args)
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert "unknown modality 'picture'" in err and VALID in err and "vision" in err
    assert not (tmp_path / "x.npy").exists()


@pytest.mark.parametrize("command", ["embed", "classify"])
def test_help_names_image(capsys, command):
    with pytest.raises(SystemExit) as stopped:
        main([command, "--help"])
    assert stopped.value.code == 0
    out = capsys.readouterr().out
    assert "{image,text,audio,video,depth,thermal,imu}" in out
    assert "image (or vision)" in out


def test_model_benchmark_takes_image(monkeypatch):
    import argparse

    from benchmarks import model_int8

    seen = {}

    def stop(self, args=None, namespace=None):
        seen.update(vars(original(self, args, namespace)))
        raise SystemExit(0)

    original = argparse.ArgumentParser.parse_args
    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", stop)
    with pytest.raises(SystemExit):
        model_int8.main(["--modalities", "image", "vision", "text"])
    assert seen["modalities"] == [Modality.VISION, Modality.VISION, Modality.TEXT]


# ----------------------------------------------------------------------------------- library


def test_modality_of_keeps_a_modality_and_parses_names():
    assert Modality.of(Modality.AUDIO) is Modality.AUDIO
    assert Modality.of("image") is Modality.VISION
    assert Modality.of("vision") is Modality.VISION
    assert Modality.of(" Texts ") is Modality.TEXT
    with pytest.raises(ValueError, match=VALID):
        Modality.of("picture")
    with pytest.raises(TypeError, match="not a int"):
        Modality.of(3)  # type: ignore[arg-type]
    # The values stay the checkpoint's encoder keys and the wire's names.
    assert [m.value for m in Modality] == [
        "vision", "text", "audio", "video", "depth", "thermal", "imu",
    ]  # fmt: skip


def test_embed_image_equals_embed_vision(embedder, jpeg):
    image = embedder.embed("image", [jpeg])
    assert image.shape == (1, embedder.model.config.out_embed_dim)
    np.testing.assert_array_equal(image, embedder.embed("vision", [jpeg]))
    np.testing.assert_array_equal(image, embedder.embed(Modality.VISION, [jpeg]))
    np.testing.assert_array_equal(image, embedder.embed("images", [jpeg]))


def test_embed_refuses_an_unknown_modality_with_the_valid_names(embedder, jpeg):
    with pytest.raises(ValueError, match=f"unknown modality 'picture'.*{VALID}"):
        embedder.embed("picture", [jpeg])


def test_tensor_and_zero_shot_entry_points_take_image(embedder, jpeg):
    batch = embedder.preprocessor.load_batch("image", [jpeg])
    assert batch.shape == embedder.example_batch("image").shape
    assert embedder.preprocessor.item_shape("image") == embedder.preprocessor.item_shape("vision")
    assert embedder.preprocessor.item_bytes("image") == embedder.preprocessor.item_bytes("vision")
    np.testing.assert_array_equal(
        embedder.embed_tensors("image", batch).numpy(), embedder.embed("vision", [jpeg])
    )
    labels = ["cat", "dog"]
    np.testing.assert_array_equal(
        embedder.zero_shot_logits("image", [jpeg], labels),
        embedder.zero_shot_logits("vision", [jpeg], labels),
    )
    probabilities = embedder.classify("image", [jpeg], labels)
    assert probabilities.shape == (1, 2)
    scorer = embedder.label_scorer(labels, ["image", "vision", "audio"])
    assert list(scorer.classes) == [Modality.VISION, Modality.AUDIO]
    unit = embedder.embed("image", [jpeg])
    np.testing.assert_array_equal(
        scorer.logits("image", unit), scorer.logits(Modality.VISION, unit)
    )


MESSAGE = r"items must be a list \(of texts or of bytes\), not a {}: pass \[item\]"


def test_a_bare_text_is_a_type_error_not_its_characters(embedder):
    with pytest.raises(TypeError, match=MESSAGE.format("str")):
        embedder.embed("text", "a dog")
    with pytest.raises(TypeError, match=MESSAGE.format("str")):
        embedder.classify("text", "a dog", ["cat", "dog"])
    with pytest.raises(TypeError, match=MESSAGE.format("str")):
        embedder.zero_shot_logits("text", "a dog", ["cat", "dog"])
    assert embedder.embed("text", ["a dog"]).shape[0] == 1


def test_bare_bytes_are_a_type_error(embedder, jpeg):
    with pytest.raises(TypeError, match=MESSAGE.format("bytes")):
        embedder.embed("image", jpeg)
    with pytest.raises(TypeError, match=MESSAGE.format("bytes")):
        embedder.classify("image", jpeg, ["cat", "dog"])
    with pytest.raises(TypeError, match=MESSAGE.format("bytes")):
        embedder.preprocessor.load_batch("image", jpeg)
