"""Queries beyond one item (composed, hybrid, filtered) and tenants, against the real Weaviate."""

from __future__ import annotations

import json

import numpy as np
import pytest
from weaviate.util import generate_uuid5

from ib_vectorizer.modalities import Modality
from pipelines.near import compose, near_composed
from pipelines.query import main as ib_query

from .test_ingest import (
    DIRECTORY_FILES,
    MODALITY_OF_FOLDER,
    copy_dataset,
    run_ingest,
    server_vector,
)

LIMIT = 6


@pytest.fixture(scope="module")
def media(stack, tmp_path_factory):
    """A collection of every modality, made by ib-ingest, and the tree it came from."""
    root = tmp_path_factory.mktemp("composed")
    tree = copy_dataset(root / "tree")
    assert run_ingest(stack, tree, "Composed", root / "f.jsonl") == 0
    return tree


def query(stack, capsys, *args: str) -> tuple[int, list[str], str]:
    """``ib-query --json`` of the Composed collection: exit status, hit ids, stderr."""
    return query_collection(stack, capsys, "--collection", "Composed", "--limit", str(LIMIT), *args)


def nearest(client, vector: np.ndarray) -> list[str]:
    result = client.collections.get("Composed").query.near_vector(
        near_vector=vector.tolist(), target_vector="imagebind", limit=LIMIT
    )
    return [str(o.uuid) for o in result.objects]


def test_a_weighted_mix_of_image_audio_and_text_is_one_near_vector_search(
    stack, client, capsys, media
):
    image, audio = media / "image/cat.jpg", media / "audio/tone.wav"
    text = "at night, in the rain"
    status, ids, err = query(
        stack, capsys,
        "--near-image", str(image), "--near-audio", str(audio), "--near-text", text,
        "--weights", "1,0.5,-0.3", "--vectorizer-url", stack.endpoints.vectorizer,
    )  # fmt: skip
    assert status == 0, err
    vectors = [
        server_vector(stack, Modality.VISION, image.read_bytes()),
        server_vector(stack, Modality.AUDIO, audio.read_bytes()),
        server_vector(stack, Modality.TEXT, text),
    ]
    units = [v / np.linalg.norm(v) for v in vectors]
    total = 1.0 * units[0] + 0.5 * units[1] - 0.3 * units[2]
    assert ids == nearest(client, total / np.linalg.norm(total))
    assert len(ids) == LIMIT


def test_repeated_items_of_one_kind_and_the_python_api(stack, client, capsys, media):
    first, second = media / "image/cat.jpg", media / "photos/logo.png"
    status, ids, err = query(
        stack, capsys, "--near-image", str(first), "--near-image", str(second),
        "--vectorizer-url", stack.endpoints.vectorizer,
    )  # fmt: skip
    assert status == 0, err
    a = server_vector(stack, Modality.VISION, first.read_bytes())
    b = server_vector(stack, Modality.VISION, second.read_bytes())
    expected = nearest(client, (a + b) / np.linalg.norm(a + b))
    assert ids == expected
    hits = near_composed(
        client.collections.get("Composed"),
        [("image", first.read_bytes()), ("image", second.read_bytes())],
        vectorizer_url=stack.endpoints.vectorizer,
        limit=LIMIT,
    )
    assert [hit["id"] for hit in hits] == expected


def test_composed_queries_say_what_is_wrong(stack, capsys, media, tmp_path):
    image = str(media / "image/cat.jpg")
    status, _, err = query(stack, capsys, "--near-image", image, "--near-text", "x")
    assert status != 0 and "--vectorizer-url" in err
    vectorizer = ["--vectorizer-url", stack.endpoints.vectorizer]
    status, _, err = query(
        stack, capsys, "--near-image", image, "--near-text", "x", "--weights", "1", *vectorizer
    )
    assert status != 0 and "1 weights for 2" in err.replace("gives ", "")
    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"not audio")
    status, _, err = query(
        stack, capsys, "--near-image", image, "--near-audio", str(broken), *vectorizer
    )
    assert status != 0 and "query item 2 (audio)" in err


def test_compose_is_the_normalised_weighted_sum():
    a, b = np.array([1.0, 0.0]), np.array([0.0, 2.0])
    np.testing.assert_allclose(compose([a, b], [1, -1]), np.array([1, -1]) / np.sqrt(2), rtol=1e-6)
    with pytest.raises(ValueError, match="cancel out"):
        compose([a, a], [1, -1])
    with pytest.raises(ValueError, match="2 weights for 1"):
        compose([a], [1, 2])


def test_hybrid_search_of_text(stack, client, capsys, media):
    """ALPHA 0 is BM25 alone: only the text that holds the words; ALPHA 1 the vector search."""
    status, ids, err = query(stack, capsys, "--near-text", "dog barking", "--hybrid", "0")
    assert status == 0, err
    assert ids == [str(generate_uuid5("text/note.txt"))]
    status, ids, err = query(stack, capsys, "--near-text", "dog barking", "--hybrid", "1")
    assert status == 0, err
    by_vector = client.collections.get("Composed").query.near_text(
        query="dog barking", target_vector="imagebind", limit=LIMIT
    )
    assert ids == [str(o.uuid) for o in by_vector.objects]
    status, _, err = query(stack, capsys, "--near-image", "x.jpg", "--hybrid", "0.5")
    assert status != 0 and "--hybrid searches one --near-text" in err


def test_where_filters_are_exact_and_name_unknown_properties(stack, capsys, media):
    status, ids, err = query(
        stack, capsys, "--near-text", "anything", "--where", "source_id=image/cat.jpg"
    )
    assert status == 0, err
    assert ids == [str(generate_uuid5("image/cat.jpg"))]
    status, _, err = query(stack, capsys, "--near-text", "x", "--where", "colour=red")
    assert status != 0 and "no property 'colour'" in err and "source_id" in err


def test_tenants_are_isolated_and_array_labels_match_an_element(stack, client, capsys):
    """A multi-tenant collection (written with the Beam plugin): a query of one tenant sees
    only its objects; ``--where labels=dog`` matches objects whose labels hold "dog"."""
    import apache_beam as beam

    from pipelines.beam import WriteToWeaviate

    e = stack.endpoints
    rng = np.random.default_rng(5)
    rows = {
        tenant: [
            {
                "id": f"{tenant}-{i}",
                "properties": {"labels": ["dog", "grass"] if i % 2 else ["cat"]},
                "vector": rng.normal(size=32),
            }
            for i in range(8)
        ]
        for tenant in ("alpha", "beta")
    }
    with beam.Pipeline(runner="FnApiRunner") as pipeline:
        for tenant, objects in rows.items():
            _ = (
                pipeline
                | f"Rows {tenant}" >> beam.Create(objects)
                | f"Write {tenant}"
                >> WriteToWeaviate(
                    "PerTenant",
                    url=e.weaviate_http,
                    grpc_port=e.weaviate_grpc_port,
                    tenant=tenant,
                    create_collection=True,
                )
            )
    vectorizer = ["--vectorizer-url", e.vectorizer, "--weights", "1"]
    args = ["--collection", "PerTenant", "--near-text", "a dog", *vectorizer, "--limit", "20"]
    for tenant, objects in rows.items():
        status, ids, err = query_collection(stack, capsys, *args, "--tenant", tenant)
        assert status == 0, err
        assert sorted(ids) == sorted(str(generate_uuid5(o["id"])) for o in objects)
        status, ids, err = query_collection(
            stack, capsys, *args, "--tenant", tenant, "--where", "labels=dog"
        )
        assert status == 0, err
        dogs = [o for o in objects if "dog" in o["properties"]["labels"]]
        assert sorted(ids) == sorted(str(generate_uuid5(o["id"])) for o in dogs)


def query_collection(stack, capsys, *args: str) -> tuple[int, list[str], str]:
    """``ib-query --json ARGS`` against the test stack's Weaviate."""
    e = stack.endpoints
    capsys.readouterr()
    status = ib_query(
        [
            *args,
            "--json",
            "--weaviate-url",
            e.weaviate_http,
            "--grpc-port",
            str(e.weaviate_grpc_port),
        ]
    )
    out = capsys.readouterr()
    return status, [json.loads(line)["id"] for line in out.out.splitlines()], out.err


def test_ib_ingest_into_tenants_keeps_them_apart(stack, client, capsys, media, tmp_path):
    """``ib-ingest --tenant``: the tenant is made on demand, each tenant holds its own
    objects, ``--delete-missing`` in one leaves the other alone, and a multi-tenant
    collection without --tenant is refused in one line."""
    small = tmp_path / "small"
    (small / "image").mkdir(parents=True)
    (small / "image" / "cat.jpg").write_bytes((media / "image/cat.jpg").read_bytes())
    failures = tmp_path / "f.jsonl"
    assert run_ingest(stack, media, "Teams", failures, "--tenant", "red") == 0
    assert run_ingest(stack, small, "Teams", failures, "--tenant", "blue") == 0
    teams = client.collections.get("Teams")

    def count(tenant: str) -> int:
        return teams.with_tenant(tenant).aggregate.over_all(total_count=True).total_count

    everything = count("red")
    assert everything == sum(1 for p in media.rglob("*") if p.is_file()) and count("blue") == 1
    assert run_ingest(stack, small, "Teams", failures, "--tenant", "red", "--delete-missing") == 0
    assert count("red") == 1 and count("blue") == 1
    status, ids, err = query_collection(
        stack, capsys, "--collection", "Teams", "--tenant", "blue", "--near-text", "a cat"
    )
    assert status == 0, err
    assert ids == [str(generate_uuid5("image/cat.jpg"))]
    assert run_ingest(stack, small, "Teams", failures) == 1
    assert "is multi-tenant: name a tenant" in capsys.readouterr().err


def test_every_object_says_its_modality_and_the_filter_is_exact(stack, capsys, media):
    """``modality`` on every ib-ingest object; ``--where modality=M`` returns all of M, only."""
    for label in ("audio", "image", "imu", "text"):
        status, ids, err = query_collection(
            stack, capsys, "--collection", "Composed", "--near-text", "anything",
            "--where", f"modality={label}", "--limit", "100",
        )  # fmt: skip
        assert status == 0, err
        expected = [
            source_id
            for source_id in [*DIRECTORY_FILES, "text/note.txt"]
            if MODALITY_OF_FOLDER[source_id.split("/")[0]].label == label
        ]
        assert sorted(ids) == sorted(str(generate_uuid5(s)) for s in expected), label


def test_the_table_and_the_errors_speak_of_the_users_things(stack, capsys, media, tmp_path):
    """The table hides content_hash and keeps each hit on one line; a misspelt collection
    lists the real ones; a file Weaviate's vectorizer cannot use is named."""
    e = stack.endpoints
    where = ["--weaviate-url", e.weaviate_http, "--grpc-port", str(e.weaviate_grpc_port)]
    capsys.readouterr()
    status = ib_query(["--collection", "Composed", "--near-text", "a dog", "--limit", "20", *where])
    out = capsys.readouterr().out
    assert status == 0 and "content_hash" not in out and "source_id=text/note.txt" in out
    assert all(line.count("source_id=") <= 1 for line in out.splitlines())
    assert ib_query(["--collection", "Composd", "--near-text", "a dog", *where]) == 1
    err = capsys.readouterr().err
    assert "collection 'Composd' does not exist (collections:" in err and "Composed" in err
    not_audio = tmp_path / "not_audio.wav"
    not_audio.write_bytes(b"RIFF this is not a wave file at all" * 10)
    assert ib_query(["--collection", "Composed", "--near-audio", str(not_audio), *where]) == 1
    err = capsys.readouterr().err
    assert f"{not_audio}: Weaviate's vectorizer could not use it as audio" in err
    assert len(err.strip().splitlines()) == 1


def test_a_hit_is_one_line_whatever_its_text(capsys):
    from pipelines.query import print_hits

    properties = {"text": "two\nlines", "content_hash": "x", "image": None}
    hit = {"id": "0" * 36, "distance": 0.5, "properties": properties}
    print_hits([hit], as_json=False)
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 2 and "text=two ⏎ lines" in out[1] and "content_hash" not in out[1]
    assert "image=" not in out[1]  # a field the object has no value in
    print_hits([hit], as_json=True)
    assert json.loads(capsys.readouterr().out)["properties"]["content_hash"] == "x"
