"""Zero-shot classification: the reference's arithmetic, the library call, the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ib_vectorizer.embedder import Embedder
from ib_vectorizer.modalities import Modality
from ib_vectorizer.zero_shot import (
    TEMPLATES,
    label_vectors,
    read_labels,
    templates_for,
    top_labels,
)

from .fixture_data import INPUTS
from .test_cli import TINY, run_cli

MEDIA = ["vision", "audio", "depth", "thermal", "imu", "video"]


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


@pytest.fixture(scope="module")
def embedder(tiny_model) -> Embedder:
    return Embedder(tiny_model)


@pytest.mark.parametrize("modality", MEDIA)
def test_probabilities_are_the_references_softmax(embedder, manifest, expected, texts, modality):
    """Labels as they are ('{}'): the softmax of the reference's outputs times its text outputs."""
    items = [(INPUTS / name).read_bytes() for name in manifest[modality]]
    got = embedder.classify(modality, items, texts, templates=["{}"])
    reference = softmax(expected[modality].astype(np.float64) @ expected["text"].T)
    assert got.shape == reference.shape and np.allclose(got.sum(axis=1), 1.0, atol=1e-5)
    assert (got.argmax(axis=1) == reference.argmax(axis=1)).all()
    np.testing.assert_allclose(got, reference, atol=0.02)


def test_a_text_label_ensemble_is_the_mean_of_its_prompts_unit_vectors():
    rng = np.random.default_rng(0)
    prompts = rng.normal(size=(2 * 3, 8))
    prompts /= np.linalg.norm(prompts, axis=1, keepdims=True)
    got = label_vectors(prompts, num_labels=2, text_scale=50.0)
    for label in range(2):
        mean = prompts[3 * label : 3 * label + 3].mean(axis=0)
        np.testing.assert_allclose(got[label], 50.0 * mean / np.linalg.norm(mean), rtol=1e-5)


def test_templates_are_checked_and_every_modality_has_defaults():
    assert set(TEMPLATES) == set(Modality)
    assert all("{}" in t for templates in TEMPLATES.values() for t in templates)
    assert templates_for(Modality.AUDIO, ["{}"]) == ("{}",)
    with pytest.raises(ValueError, match="no '\\{\\}'"):
        templates_for(Modality.AUDIO, ["a sound"])


def test_top_labels_keeps_the_best_first_and_drops_the_unlikely():
    probabilities = np.array([[0.1, 0.6, 0.3], [0.5, 0.2, 0.3]])
    ranked = top_labels(np.log(probabilities), ["a", "b", "c"], k=2, min_score=0.25)
    expected = [[("b", 0.6), ("c", 0.3)], [("a", 0.5), ("c", 0.3)]]
    assert [[(label, pytest.approx(p)) for label, p in row] for row in expected] == ranked


def test_labels_far_from_the_top_are_ranked_by_logit_though_their_probability_is_zero():
    logits = np.array([[2000.0, 0.0, 900.0, 1500.0, 300.0]], dtype=np.float32)
    ranked = top_labels(logits, ["a", "b", "c", "d", "e"], k=5)
    assert [label for label, _ in ranked[0]] == ["a", "d", "c", "e", "b"]
    assert ranked[0][0][1] == 1.0 and ranked[0][1][1] == 0.0


def test_labels_files(tmp_path):
    path = tmp_path / "labels.txt"
    path.write_text("dog\n\n cat \n")
    assert read_labels(str(path)) == ["dog", "cat"]
    path.write_text("dog\ndog\n")
    with pytest.raises(ValueError, match="repeats 'dog'"):
        read_labels(str(path))
    with pytest.raises(ValueError, match="cannot read"):
        read_labels(str(tmp_path / "missing.txt"))


def test_classify_command_ranks_as_an_independent_cosine_ranking(tmp_path, manifest, expected):
    """``ib-vectorizer classify --json``: per file, the top-k labels of a cosine ranking made
    here from the reference's outputs, with probabilities summing to at most 1."""
    labels = ["a dog barking", "rain on a roof", "a red car", "birds at dawn", "an empty room"]
    (tmp_path / "labels.txt").write_text("\n".join(labels) + "\n")
    files = [str(INPUTS / name) for name in manifest["audio"]]
    result = run_cli(
        "classify", "--modality", "audio", "--labels", str(tmp_path / "labels.txt"),
        "--label-template", "{}", "--top-k", "3", "--json", *TINY, *files,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [row["input"] for row in rows] == files
    text = run_cli(
        "embed", "--modality", "text", *TINY, "--output", str(tmp_path / "t.npy"), *labels
    )
    assert text.returncode == 0, text.stderr
    label_units = np.load(tmp_path / "t.npy")
    items = expected["audio"] / np.linalg.norm(expected["audio"], axis=1, keepdims=True)
    for row, item in zip(rows, items, strict=True):
        cosines = label_units @ item
        assert row["labels"] == [labels[j] for j in np.argsort(-cosines)[:3]]
        assert row["scores"] == sorted(row["scores"], reverse=True) and sum(row["scores"]) <= 1.0001


def test_classify_command_names_a_bad_file_and_accepts_image(tmp_path):
    (tmp_path / "labels.txt").write_text("cat\ndog\n")
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a picture")
    args = ["classify", "--modality", "image", "--labels", str(tmp_path / "labels.txt"), *TINY]
    result = run_cli(*args, str(INPUTS / "image_rgb.jpg"), str(broken))
    assert result.returncode == 2 and str(broken) in result.stderr
    good = run_cli(*args, str(INPUTS / "image_rgb.jpg"))
    assert good.returncode == 0, good.stderr
    assert "image_rgb.jpg" in good.stdout and "%" in good.stdout
