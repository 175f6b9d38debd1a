"""A named vector per media field (``ib-ingest --vector-per-field``), against the real Weaviate.

Each field's vector must be that field's own embedding, whoever computes it
(the job, or Weaviate through our server); ``ib-query --target-vector FIELD``
must search it alone; re-runs must keep every vector of an object in step.
"""

from __future__ import annotations

import base64
import logging
import shutil

import numpy as np
import pytest
from weaviate.classes.data import DataObject
from weaviate.exceptions import WeaviateInsertManyAllFailedError
from weaviate.util import generate_uuid5

from ib_vectorizer.modalities import Modality
from ib_vectorizer.options import ModelOptions
from pipelines.schema import (
    DEFAULT_VECTOR_NAME,
    MediaField,
    combine_like_weaviate,
    create_bind_collection,
    field_vector_configs,
)

from .fixture_data import INPUTS
from .media import tone, wav_bytes
from .test_ingest import count, read_failures, run_ingest, server_vector, write_manifest
from .test_ingest_incremental import summary_of
from .test_query_modes import query_collection

FIELDS = (
    MediaField("audio", Modality.AUDIO),
    MediaField("image", Modality.VISION),
    MediaField("imu", Modality.IMU),
    MediaField("text_caption", Modality.TEXT),
)
MODALITY = {f.name: f.modality for f in FIELDS}
FILES = {  # name in the tree → fixture file (None: synthesised below)
    "cat.jpg": "image_rgb.jpg",
    "logo.png": "image_rgba.png",
    "gray.png": "image_gray.png",
    "warm.jpg": "thermal_a.jpg",
    "tone.wav": "tone_16k_mono.wav",
    "chirp.wav": "chirp_44k_stereo.wav",
    "short.wav": "short_8k_mono.wav",
    "chord.wav": None,
    "a.csv": "imu_1500.csv",
    "b.csv": "imu_2000.csv",
    "c.csv": "imu_3000.csv",
}
ROWS = [
    {"id": "r1", "image": "cat.jpg", "audio": "tone.wav", "imu": "a.csv", "text_caption": "a cat"},
    {
        "id": "r2",
        "image": "logo.png",
        "audio": "chirp.wav",
        "imu": "b.csv",
        "text_caption": "a logo",
    },
    {"id": "r3", "image": "gray.png", "audio": "short.wav", "imu": "c.csv", "text_caption": "rain"},
    {
        "id": "r4",
        "image": "warm.jpg",
        "audio": "chord.wav",
        "imu": "a.csv",
        "text_caption": "a walk",
    },
]


def make_tree(root):
    root.mkdir(parents=True)
    for name, fixture in FILES.items():
        if fixture is None:
            (root / name).write_bytes(wav_bytes(tone([330.0, 495.0], 2.0, 16000), 16000))
        else:
            shutil.copy(INPUTS / fixture, root / name)
    return root


def field_vector(stack, tree, row: dict, field: str) -> np.ndarray:
    """The field's own embedding, from our inference server's /vectorize."""
    modality = MODALITY[field]
    content = row[field] if modality is Modality.TEXT else (tree / row[field]).read_bytes()
    return server_vector(stack, modality, content)


def stored_vectors(client, collection: str, row_id: str) -> dict[str, np.ndarray]:
    obj = client.collections.get(collection).query.fetch_object_by_id(
        generate_uuid5(row_id), include_vector=True
    )
    assert obj is not None, row_id
    return {name: np.array(vector) for name, vector in obj.vector.items()}


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def assert_field_vectors(stack, client, collection: str, tree, rows: list[dict]) -> None:
    """Every object holds the combined vector and each field's own embedding under its name."""
    for row in rows:
        stored = stored_vectors(client, collection, row["id"])
        assert set(stored) == {DEFAULT_VECTOR_NAME, *MODALITY}, row["id"]
        own = {field: field_vector(stack, tree, row, field) for field in MODALITY}
        for field, vector in own.items():
            assert cosine(stored[field], vector) >= 0.9999, (row["id"], field)
        combined = combine_like_weaviate(own, FIELDS)
        assert cosine(stored[DEFAULT_VECTOR_NAME], combined) >= 0.9999, row["id"]


def ingest(stack, tree, collection: str, rows: list[dict], *args: str) -> int:
    manifest = write_manifest("jsonl", tree, rows)
    return run_ingest(stack, manifest, collection, tree / "failures.jsonl", *args)


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    return make_tree(tmp_path_factory.mktemp("fields") / "tree")


@pytest.fixture(scope="module")
def by_field(stack, tree) -> str:
    """A collection with a vector per field, made by ib-ingest --embed local. Its media are
    stored by URI, so Weaviate could not embed them: their vectors are the job's."""
    assert ingest(stack, tree, "ByField", ROWS, "--vector-per-field", "--store-uri") == 0
    assert read_failures(tree / "failures.jsonl") == []
    return "ByField"


def test_local_embedding_stores_each_fields_own_embedding(stack, client, tree, by_field):
    assert_field_vectors(stack, client, by_field, tree, ROWS)
    config = client.collections.get(by_field).config.get().vector_config
    for field in MODALITY:  # Weaviate can embed each one itself, from that field alone
        assert config[field].vectorizer.vectorizer.value == "multi2vec-bind"
        assert list(config[field].vectorizer.model.values()) == [[field]]


@pytest.mark.parametrize("embed", ["weaviate", "server"])
def test_weaviate_or_the_server_embeds_each_field_alone(stack, client, tmp_path, embed):
    """--embed weaviate: Weaviate computes every named vector itself, each from its field;
    --embed server: the job has our server embed the fields and writes their vectors."""
    tree = make_tree(tmp_path / "tree")
    name = f"ByField{embed.capitalize()}"
    assert ingest(stack, tree, name, ROWS, "--vector-per-field", "--embed", embed) == 0
    assert read_failures(tree / "failures.jsonl") == []
    assert_field_vectors(stack, client, name, tree, ROWS)


def test_ib_query_target_vector_audio_ranks_by_the_audio_vector_alone(
    stack, client, capsys, tree, by_field
):
    query = tree / ROWS[2]["audio"]
    status, ids, err = query_collection(
        stack, capsys, "--collection", by_field, "--near-audio", str(query),
        "--target-vector", "audio", "--limit", str(len(ROWS)),
    )  # fmt: skip
    assert status == 0, err
    wanted = server_vector(stack, Modality.AUDIO, query.read_bytes())

    def ranked(vectors: dict[str, np.ndarray]) -> list[str]:
        order = sorted(vectors, key=lambda row_id: -cosine(vectors[row_id], wanted))
        return [str(generate_uuid5(row_id)) for row_id in order]

    own = {row["id"]: {f: field_vector(stack, tree, row, f) for f in MODALITY} for row in ROWS}
    by_audio = ranked({row_id: fields["audio"] for row_id, fields in own.items()})
    by_all = ranked({row_id: combine_like_weaviate(v, FIELDS) for row_id, v in own.items()})
    assert ids == by_audio and ids[0] == str(generate_uuid5(ROWS[2]["id"]))
    assert by_all != by_audio  # so the combined vector would have answered otherwise


def test_a_rerun_after_changing_one_field_rewrites_whole_objects(stack, client, tmp_path, caplog):
    """Changed objects are replaced whole (every named vector), deleted ones go whole, and the
    result equals a fresh ingest of the edited manifest."""
    tree = make_tree(tmp_path / "tree")
    assert ingest(stack, tree, "ByFieldEdited", ROWS, "--vector-per-field") == 0
    collection = client.collections.get("ByFieldEdited")
    noise = np.random.default_rng(3).normal(
        size=len(stored_vectors(client, "ByFieldEdited", "r2")["image"])
    )
    collection.data.update(uuid=generate_uuid5("r2"), vector={"image": noise.tolist()})
    assert cosine(stored_vectors(client, "ByFieldEdited", "r2")["image"], noise) > 0.9999

    edited = [dict(row) for row in ROWS[:3]]
    edited[1]["audio"] = "chord.wav"  # r2's audio changes; its image does not; r4 is gone
    with caplog.at_level(logging.INFO, logger="ib_ingest"):
        status = ingest(
            stack, tree, "ByFieldEdited", edited, "--vector-per-field", "--delete-missing"
        )
        assert status == 0
        summary = summary_of(caplog)
    assert "embedded 1, written 1, failed 0, unchanged 2, deleted 1" in summary
    assert count(client, "ByFieldEdited") == 3
    assert collection.query.fetch_object_by_id(generate_uuid5("r4")) is None
    assert_field_vectors(stack, client, "ByFieldEdited", tree, edited)  # r2's image restored

    assert ingest(stack, tree, "ByFieldFresh", edited, "--vector-per-field") == 0
    for row in edited:
        fresh = stored_vectors(client, "ByFieldFresh", row["id"])
        rerun = stored_vectors(client, "ByFieldEdited", row["id"])
        assert rerun.keys() == fresh.keys()
        for name, vector in fresh.items():
            np.testing.assert_allclose(
                rerun[name], vector, atol=1e-6, err_msg=f"{row['id']} {name}"
            )


def test_turning_the_flag_on_adds_the_vectors_and_turning_it_off_is_refused(
    stack, client, capsys, tmp_path, caplog
):
    tree = make_tree(tmp_path / "tree")
    weaviate = ("--embed", "weaviate")
    assert ingest(stack, tree, "ByFieldLater", ROWS, *weaviate) == 0
    assert set(stored_vectors(client, "ByFieldLater", "r1")) == {DEFAULT_VECTOR_NAME}
    with caplog.at_level(logging.INFO, logger="ib_ingest"):
        assert ingest(stack, tree, "ByFieldLater", ROWS, *weaviate, "--vector-per-field") == 0
        assert "written 4, failed 0, unchanged 0" in summary_of(caplog)  # the hash covers it
        assert ingest(stack, tree, "ByFieldLater", ROWS, *weaviate, "--vector-per-field") == 0
        assert "written 0, failed 0, unchanged 4" in summary_of(caplog)
    assert_field_vectors(stack, client, "ByFieldLater", tree, ROWS)
    capsys.readouterr()
    assert ingest(stack, tree, "ByFieldLater", ROWS, *weaviate) == 1
    err = capsys.readouterr().err
    assert "has a vector per media field (audio, image, imu, text_caption)" in err
    assert "--vector-per-field" in err and len(err.strip().splitlines()) == 1


def test_an_object_lacking_a_field_is_dead_lettered_and_never_half_stored(stack, client, tmp_path):
    """Weaviate vectorizes a named vector it is not given: from an absent field that is an
    empty vector, which it refuses. So ib-ingest does not send such an object."""
    tree = make_tree(tmp_path / "tree")
    rows = [dict(ROWS[0]), {**ROWS[1], "audio": None}]
    assert ingest(stack, tree, "ByFieldPartial", rows, "--vector-per-field") == 0
    dead = read_failures(tree / "failures.jsonl")
    assert [(d["id"], d["stage"]) for d in dead] == [("r2", "write")]
    assert "lacks media field(s) audio" in dead[0]["error"]
    assert count(client, "ByFieldPartial") == 1
    assert (
        client.collections.get("ByFieldPartial").query.fetch_object_by_id(generate_uuid5("r2"))
        is None
    )

    # What Weaviate itself does with such an object, written directly:
    image = base64.b64encode((tree / "cat.jpg").read_bytes()).decode()
    lacking = {
        "image": image,
        "text_caption": "no sound",
        "imu": base64.b64encode((tree / "a.csv").read_bytes()).decode(),
    }
    partial = client.collections.get("ByFieldPartial")
    with pytest.raises(
        WeaviateInsertManyAllFailedError,
        match=r"vector index audio .*new node has a vector with length 0",
    ):
        partial.data.insert_many([DataObject(properties=lacking, uuid=generate_uuid5("lacking"))])
    assert partial.query.fetch_object_by_id(generate_uuid5("lacking")) is None
    empty = create_bind_collection(client, "ByFieldEmpty", FIELDS, field_vectors=True)
    with pytest.raises(
        WeaviateInsertManyAllFailedError, match="target vector audio: insert called with nil-vector"
    ):
        empty.data.insert_many([DataObject(properties=lacking, uuid=generate_uuid5("x"))])
    assert empty.query.fetch_object_by_id(generate_uuid5("x")) is not None  # refused, yet kept


def test_what_cannot_have_a_vector_per_field_is_refused_up_front(stack, client, capsys, tmp_path):
    tree = make_tree(tmp_path / "tree")
    capsys.readouterr()
    assert run_ingest(stack, tree, "ByFieldDir", tmp_path / "f.jsonl", "--vector-per-field") == 1
    assert "a directory's files and segments hold one field each" in capsys.readouterr().err
    rows = [{"id": "r1", "imagebind": "cat.jpg", "text_caption": "a cat"}]
    status = ingest(
        stack,
        tree,
        "ByFieldClash",
        rows,
        "--vector-per-field",
        "--modality-columns",
        "image=imagebind",
    )
    assert status == 1
    assert "media field 'imagebind' cannot have a vector of its own" in capsys.readouterr().err
    assert not client.collections.exists("ByFieldDir")
    assert not client.collections.exists("ByFieldClash")


def test_the_flag_changes_the_content_hash_only_when_on_and_objects_carry_the_vectors():
    from pipelines.ingest.elements import ReadyObject
    from pipelines.ingest.incremental import model_fingerprint
    from pipelines.ingest.inputs import InputSpec
    from pipelines.ingest.pipeline import IngestConfig, to_weaviate_object

    options = ModelOptions(random_weights=True)
    before = model_fingerprint("local", options, FIELDS, None)
    assert model_fingerprint("local", options, FIELDS, None, field_vectors=False) == before
    assert model_fingerprint("local", options, FIELDS, None, field_vectors=True) != before

    config = IngestConfig(
        spec=InputSpec("x.jsonl"), collection="C", embed="local", fields=FIELDS[:2],
        model=options, vectorizer_url=None, batch_size=8, max_batch_views=8,
        store_uri=False, share_model=False, field_vectors=True,
    )  # fmt: skip
    ready = ReadyObject(
        source_id="id-1",
        source="m.jsonl:line 1",
        properties={},
        media={"audio": b"\x01", "image": b"\x02"},
        modalities={"audio": Modality.AUDIO, "image": Modality.VISION},
    )
    audio, image = np.array([1.0, 0.0]), np.array([0.0, 1.0])
    obj = to_weaviate_object(ready, {"audio": audio, "image": image, "other": audio}, config)
    assert set(obj["vectors"]) == {"audio", "image"}  # only the collection's fields
    np.testing.assert_allclose(obj["vectors"]["image"], image)
    np.testing.assert_allclose(obj["vector"], [0.5, 0.5])
    with pytest.raises(ValueError, match="cannot have a vector of its own"):
        field_vector_configs([MediaField("imagebind", Modality.VISION)])
    imu = field_vector_configs([MediaField("motion", Modality.IMU)])["motion"]
    assert imu["vectorizer"]["multi2vec-bind"] == {"imuFields": ["motion"]}  # as Weaviate reads
