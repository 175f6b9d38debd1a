"""Zero-shot tags: ``ib-ingest --labels`` stores them, ``ib-tag`` re-tags from stored vectors,
against the real Weaviate and inference server (tiny model)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from benchmarks.retag_vs_ingest import measure
from ib_vectorizer.modalities import Modality
from ib_vectorizer.options import ModelOptions
from ib_vectorizer.zero_shot import TEMPLATES, LabelScorer
from pipelines.labels import LabelSet, scored_as, tag_properties, with_labels
from pipelines.tag.command import main as ib_tag

from .server_process import TINY_ENV
from .test_ingest import copy_dataset, run_ingest, server_vector
from .test_query_modes import query_collection

# Labels no one tuned the tiny model on; its random weights rank them arbitrarily but fixedly.
LABELS = ("dog", "cat", "piano", "rain", "traffic", "a person walking", "sunset", "kitchen")
NEW_LABELS = ("indoors", "outdoors", "music", "animal", "machine")


def unit(vector) -> np.ndarray:
    vector = np.asarray(vector, dtype=np.float64)
    return vector / np.linalg.norm(vector)


def cosine_top(vector, label_units: np.ndarray, labels, k: int) -> list[str]:
    """The ``k`` labels nearest ``vector`` by cosine, computed here without the product."""
    cosines = label_units @ unit(vector)
    return [labels[j] for j in np.argsort(-cosines, kind="stable")[:k]]


# -- scoring, no servers -------------------------------------------------------------------------


def test_tags_are_the_top_k_of_a_cosine_ranking_with_softmax_scores():
    rng = np.random.default_rng(7)
    labels = tuple(f"label {i}" for i in range(12))
    classes = rng.normal(size=(12, 32)).astype(np.float32)
    classes /= np.linalg.norm(classes, axis=1, keepdims=True)
    scorer = LabelScorer(labels, {Modality.AUDIO: classes * 14.0}, {Modality.AUDIO: 20.0})
    vectors = rng.normal(size=(5, 32)).astype(np.float32) * 3.0  # stored vectors, any length
    tags = tag_properties(scorer, LabelSet(labels, top_k=4), vectors, [["audio"]] * 5)
    for vector, tag in zip(vectors, tags, strict=True):
        assert tag["labels"] == cosine_top(vector, classes, labels, 4)
        logits = 20.0 * 14.0 * (classes @ unit(vector))
        expected = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
        assert tag["label_scores"] == pytest.approx(sorted(expected)[::-1][:4], abs=1e-5)
    kept = tag_properties(
        scorer, LabelSet(labels, top_k=12, min_score=0.2), vectors, [["audio"]] * 5
    )
    assert all(score >= 0.2 for tag in kept for score in tag["label_scores"])
    assert [tag["labels"][:1] for tag in kept] == [tag["labels"][:1] for tag in tags]


def test_an_object_of_several_modalities_is_scored_as_its_first_media_modality():
    assert scored_as(["text", "image"]) is Modality.VISION
    assert scored_as(["audio", "text", "thermal"]) is Modality.AUDIO
    assert scored_as(["text"]) is Modality.TEXT


def test_the_label_set_is_part_of_the_content_hash_and_checked():
    base = LabelSet(("a", "b"))
    changed = [LabelSet(("a", "c")), LabelSet(("a", "b"), ("{}",)), LabelSet(("a", "b"), top_k=1)]
    assert with_labels("model", None) == "model"
    fingerprints = {with_labels("model", s) for s in [base, *changed]}
    assert len(fingerprints) == 4
    with pytest.raises(ValueError, match="no '\\{\\}'"):
        LabelSet(("a",), ("a photo",))
    with pytest.raises(ValueError, match="--top-k"):
        LabelSet(("a",), top_k=0)
    with pytest.raises(ValueError, match="--min-score"):
        LabelSet(("a",), min_score=1.5)


# -- against the real stack ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def label_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("labels") / "labels.txt"
    path.write_text("\n".join(LABELS) + "\n\n")
    return path


@pytest.fixture(scope="module")
def tagged(stack, label_file, tmp_path_factory):
    """Every modality, ingested with bare-label tags (top 3)."""
    root = tmp_path_factory.mktemp("tagged")
    tree = copy_dataset(root / "tree")
    status = run_ingest(
        stack, tree, "Tagged", root / "f.jsonl",
        "--labels", str(label_file), "--label-template", "{}", "--top-k", "3",
        "--metrics-json", str(root / "m.json"),
    )  # fmt: skip
    assert status == 0
    return tree


def stored_objects(client, name: str, tenant: str | None = None) -> dict[str, dict]:
    collection = client.collections.get(name)
    collection = collection.with_tenant(tenant) if tenant else collection
    return {
        o.properties["source_id"]: {**o.properties, "vector": o.vector["imagebind"]}
        for o in collection.iterator(include_vector=True)
    }


def test_ingested_tags_equal_an_independent_cosine_ranking(stack, client, tagged):
    label_units = np.stack([unit(server_vector(stack, Modality.TEXT, x)) for x in LABELS])
    objects = stored_objects(client, "Tagged")
    assert len(objects) == 10
    for source_id, obj in objects.items():
        assert obj["labels"] == cosine_top(obj["vector"], label_units, LABELS, 3), source_id
        scores = obj["label_scores"]
        assert len(scores) == 3 and scores == sorted(scores, reverse=True) and sum(scores) <= 1.0001


def test_default_templates_are_each_modalitys_prompt_ensemble(stack, client, tmp_path):
    """Without --label-template an image is scored against the mean of its labels' photo
    prompts (CLIP's ensemble), an audio clip against their sound prompts."""
    tree = copy_dataset(tmp_path / "tree")
    labels = tmp_path / "labels.txt"
    labels.write_text("\n".join(LABELS))
    status = run_ingest(stack, tree, "Templated", tmp_path / "f.jsonl", "--labels", str(labels))
    assert status == 0
    objects = stored_objects(client, "Templated")
    for source_id, modality in (
        ("image/cat.jpg", Modality.VISION),
        ("audio/tone.wav", Modality.AUDIO),
    ):
        ensembles = np.stack(
            [
                unit(np.mean([unit(server_vector(stack, Modality.TEXT, t.format(x)))
                              for t in TEMPLATES[modality]], axis=0))
                for x in LABELS
            ]
        )  # fmt: skip
        obj = objects[source_id]
        assert obj["labels"] == cosine_top(obj["vector"], ensembles, LABELS, 5), source_id


def test_the_label_filter_is_exact(stack, client, capsys, tagged):
    objects = stored_objects(client, "Tagged")
    for label in LABELS:
        expected = sorted(k for k, o in objects.items() if label in o["labels"])
        status, ids, err = query_collection(
            stack, capsys, "--collection", "Tagged", "--near-text", "anything",
            "--where", f"labels={label}", "--limit", "100",
        )  # fmt: skip
        assert status == 0, err
        from weaviate.util import generate_uuid5

        assert sorted(ids) == sorted(str(generate_uuid5(k)) for k in expected), label


def test_labels_are_part_of_the_content_hash(stack, tagged, label_file, tmp_path):
    """The same labels again: nothing re-embedded; another label set: every object is."""
    metrics = tmp_path / "m.json"

    def rerun(labels) -> dict:
        status = run_ingest(
            stack, tagged, "Tagged", tmp_path / "f.jsonl",
            "--labels", str(labels), "--label-template", "{}", "--top-k", "3",
            "--metrics-json", str(metrics),
        )  # fmt: skip
        assert status == 0
        return json.loads(metrics.read_text())["counters"]

    same = rerun(label_file)
    assert same["unchanged"] == 10 and same["embedded"] == 0
    other = tmp_path / "other.txt"
    other.write_text("\n".join(NEW_LABELS))
    changed = rerun(other)
    assert changed["embedded"] == 10 and changed["unchanged"] == 0
    assert rerun(label_file)["embedded"] == 10  # back to the first set: tagged anew


def test_retagging_a_thousand_objects_reads_and_embeds_no_media(stack, tmp_path, capsys):
    """ib-tag over 1,000 photos: every object re-tagged from its stored vector, the inference
    server embeds nothing meanwhile and every vector stays bit for bit; both times are printed
    (docs/zero-shot.md has the figure from ``python -m benchmarks.retag_vs_ingest``)."""
    model = ModelOptions(model=TINY_ENV["IB_MODEL"], checkpoint=TINY_ENV["IB_CHECKPOINT"])
    figures = measure(stack.endpoints, model, tmp_path, 1000, (320, 240))
    assert figures["ingest"]["written"] == 1000
    assert figures["tag"] == {"read": 1000, "tagged": 1000, "updated": 1000, "failed": 0}
    assert figures["server_items_embedded_during_tag"] == 0
    assert figures["vectors_unchanged"]
    with capsys.disabled():
        print(f"\n1,000 photos: ingest {figures['ingest_s']} s, re-tag {figures['tag_s']} s")


def test_ib_tag_retags_one_tenant_only(stack, client, tmp_path, label_file):
    tree = copy_dataset(tmp_path / "tree")
    for tenant in ("red", "blue"):
        status = run_ingest(
            stack, tree, "TaggedTeams", tmp_path / "f.jsonl", "--tenant", tenant,
            "--labels", str(label_file), "--label-template", "{}",
        )  # fmt: skip
        assert status == 0
    new = tmp_path / "new.txt"
    new.write_text("\n".join(NEW_LABELS))
    assert tag(stack, "TaggedTeams", new, tmp_path, "--tenant", "red", "--top-k", "2") == 0
    red, blue = (
        stored_objects(client, "TaggedTeams", "red"),
        stored_objects(client, "TaggedTeams", "blue"),
    )
    label_units = np.stack([unit(server_vector(stack, Modality.TEXT, x)) for x in NEW_LABELS])
    for obj in red.values():  # IMU, depth, ... each scored with its own templates: top 2 set
        assert len(obj["labels"]) == 2 and set(obj["labels"]) <= set(NEW_LABELS)
    text = red["text/note.txt"]  # a text object's template is the bare label
    assert text["labels"] == cosine_top(text["vector"], label_units, NEW_LABELS, 2)
    assert all(set(o["labels"]) <= set(LABELS) for o in blue.values())


def tag(stack, collection: str, labels, tmp_path, *args: str) -> int:
    e = stack.endpoints
    return ib_tag(
        ["--collection", collection, "--labels", str(labels),
         "--weaviate-url", e.weaviate_http, "--grpc-port", str(e.weaviate_grpc_port),
         "--model", TINY_ENV["IB_MODEL"], "--checkpoint", TINY_ENV["IB_CHECKPOINT"],
         "--dead-letter", str(tmp_path / "tag.jsonl"), *args]
    )  # fmt: skip


def test_ib_tag_and_ib_ingest_refuse_what_they_cannot_do_in_one_line(
    stack, capsys, tmp_path, label_file, tagged
):
    assert tag(stack, "Tagedd", label_file, tmp_path) == 1
    err = capsys.readouterr().err
    assert "collection 'Tagedd' does not exist" in err and "Tagged" in err
    assert tag(stack, "Tagged", label_file, tmp_path, "--tenant", "red") == 1
    assert "is not multi-tenant: drop --tenant" in capsys.readouterr().err
    empty = tmp_path / "empty.txt"
    empty.write_text("\n")
    assert tag(stack, "Tagged", empty, tmp_path) == 1
    assert "has no labels (one per line)" in capsys.readouterr().err
    status = run_ingest(
        stack, tagged, "Tagged", tmp_path / "f.jsonl", "--embed", "weaviate",
        "--labels", str(label_file),
    )  # fmt: skip
    assert status == 1
    assert "run ib-tag after this ingest" in capsys.readouterr().err
