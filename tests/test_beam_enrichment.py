"""WeaviateSearchEnrichmentHandler: Beam's Enrichment against the real Weaviate and our server.

The collection is written by the real ``ib-ingest``; what the handler finds
is checked against what ``ib-query`` prints for the same query.
"""

from __future__ import annotations

import datetime
import json
import logging
import pickle
import socket
import uuid

import apache_beam as beam
import pytest
from apache_beam.ml.rag.types import Chunk, Content, Embedding
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.util import assert_that
from apache_beam.transforms.enrichment import Enrichment
from weaviate.classes.query import Filter
from weaviate.util import generate_uuid5

from ib_vectorizer.modalities import Modality
from pipelines.beam import WeaviateSearchEnrichmentHandler
from pipelines.query import main as ib_query
from pipelines.schema import SOURCE_ID

from .test_ingest import DIRECTORY_FILES, copy_dataset, count, run_ingest, server_vector

COLLECTION = "Enrich"
LIMIT = 5
TEXTS = ["a dog barking loudly", "a photo of a cat", "rain on a tin roof"]
# Chunks with an embedding: the server's vector of this file, queried in ib-query as --near-KIND.
MEDIA = {"image/cat.jpg": "image", "photos/logo.png": "image", "audio/tone.wav": "audio"}
MODALITY = {"image": Modality.VISION, "audio": Modality.AUDIO}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return copy_dataset(tmp_path_factory.mktemp("dataset"))


@pytest.fixture(scope="module")
def ingested(stack, client, dataset, tmp_path_factory) -> str:
    failures = tmp_path_factory.mktemp("dead") / "failures.jsonl"
    assert run_ingest(stack, str(dataset), COLLECTION, str(failures)) == 0
    assert count(client, COLLECTION) == len(DIRECTORY_FILES) + 1
    return COLLECTION


@pytest.fixture(scope="module")
def vectors(stack, dataset) -> dict[str, list[float]]:
    """Our inference server's vector of each file in MEDIA."""
    return {
        path: server_vector(stack, MODALITY[kind], (dataset / path).read_bytes()).tolist()
        for path, kind in MEDIA.items()
    }


def handler(stack, **options) -> WeaviateSearchEnrichmentHandler:
    e = stack.endpoints
    return WeaviateSearchEnrichmentHandler(
        COLLECTION, url=e.weaviate_http, grpc_port=e.weaviate_grpc_port, **options
    )


def query_hits(stack, capsys, flag: str, value: str, limit: int) -> list[dict]:
    """What the real ``ib-query --json`` prints: one hit per line."""
    e = stack.endpoints
    capsys.readouterr()
    argv = ["--collection", COLLECTION, "--json", f"--near-{flag}", value, "--limit", str(limit)]
    argv += ["--weaviate-url", e.weaviate_http, "--grpc-port", str(e.weaviate_grpc_port)]
    assert ib_query(argv) == 0
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def chunks_and_expected(stack, capsys, dataset, vectors):
    """Text-only chunks, embedding chunks (one with a caption too: the embedding wins)
    and, per chunk id, the (ids, distances) ib-query gives for the same query."""
    chunks, expected = [], {}
    for n, text in enumerate(TEXTS):
        chunk = Chunk(content=Content(text=text), id=f"text-{n}", metadata={"n": n})
        chunks.append(chunk)
        expected[chunk.id] = query_hits(stack, capsys, "text", text, LIMIT)
    for n, (path, kind) in enumerate(MEDIA.items()):
        caption = "a cat" if n == 0 else None
        chunk = Chunk(
            content=Content(text=caption),
            id=f"media-{n}",
            metadata={"path": path},
            embedding=Embedding(dense_embedding=vectors[path]),
        )
        chunks.append(chunk)
        expected[chunk.id] = query_hits(stack, capsys, kind, str(dataset / path), LIMIT)
    for hits in expected.values():
        assert len(hits) == LIMIT
    return chunks, {
        chunk_id: ([h["id"] for h in hits], [h["distance"] for h in hits])
        for chunk_id, hits in expected.items()
    }


def like_ib_query(expected: dict[str, tuple[list[str], list[float]]]):
    """An assert_that matcher: every chunk enriched with ib-query's hits, in its order."""

    def check(chunks):
        got = {chunk.id: chunk for chunk in chunks}
        assert sorted(got) == sorted(expected), sorted(got)
        for chunk_id, (ids, distances) in expected.items():
            chunk = got[chunk_id]
            data = chunk.metadata["enrichment_data"]
            assert set(data) == {"id", "distance", "fields"}, (chunk_id, set(data))
            assert data["id"] == ids, (chunk_id, data["id"], ids)
            assert len(data["distance"]) == len(distances), chunk_id
            for ours, theirs in zip(data["distance"], distances, strict=True):
                assert abs(ours - theirs) < 1e-5, (chunk_id, data["distance"], distances)
            for hit_id, fields in zip(data["id"], data["fields"], strict=True):
                assert str(generate_uuid5(fields[SOURCE_ID])) == hit_id, (chunk_id, fields)
                assert "image" not in fields and "audio" not in fields  # BLOBs are not fetched
            assert ("n" in chunk.metadata) or ("path" in chunk.metadata)  # metadata kept

    return check


def enrich(chunks, expected, stack, runner: str, options: list[str], **handler_options) -> None:
    pipeline_options = PipelineOptions(options, save_main_session=False)
    with beam.Pipeline(runner=runner, options=pipeline_options) as pipeline:
        enriched = (
            pipeline
            | beam.Create(chunks)
            | Enrichment(handler(stack, **handler_options), timeout=120)
        )
        assert_that(enriched, like_ib_query(expected))


# Beam 2.70's "DirectRunner" hands every pipeline Prism can run to Prism; the in-process
# engine it falls back to, and ran before, is the FnApiRunner, named here to test it.
IN_PROCESS = "FnApiRunner"


def test_enrichment_finds_what_ib_query_finds(stack, ingested, dataset, vectors, capsys):
    chunks, expected = chunks_and_expected(stack, capsys, dataset, vectors)
    enrich(chunks, expected, stack, IN_PROCESS, [], limit=LIMIT)
    # Batches of all six chunks at once: their searches run concurrently over one client.
    enrich(chunks, expected, stack, IN_PROCESS, [], limit=LIMIT, min_batch_size=len(chunks))


def test_enrichment_on_prism_finds_the_same(stack, ingested, dataset, vectors, capsys):
    chunks, expected = chunks_and_expected(stack, capsys, dataset, vectors)
    enrich(chunks, expected, stack, "PrismRunner", [], limit=LIMIT, max_batch_size=4)


def test_a_batch_answers_each_chunk_as_alone(stack, ingested, vectors):
    chunks = [
        Chunk(content=Content(text=f"{word} number {n}"), id=f"c{n}")
        for n, word in enumerate(["dog", "cat", "rain", "logo", "tone", "walk"] * 2)
    ]
    chunks += [Chunk(content=Content(), id=p, embedding=Embedding(v)) for p, v in vectors.items()]
    with handler(stack, limit=3) as search:
        alone = [search(chunk)[0] for chunk in chunks]
        batch = search(list(chunks))
    assert [chunk.id for chunk, _ in batch] == [chunk.id for chunk in chunks]
    for (chunk, together), (_, apart) in zip(batch, alone, strict=True):
        assert together["id"] == apart["id"] and len(together["id"]) == 3, chunk.id
        assert together["fields"] == apart["fields"], chunk.id
        # Our server may embed concurrent texts in one batch: equal to float32 rounding.
        assert together["distance"] == pytest.approx(apart["distance"], abs=1e-5), chunk.id


def test_a_filter_limits_the_hits_and_survives_pickling(stack, ingested):
    allowed = ["image/cat.jpg", "photos/logo.png", "depth/d.png"]
    chunk = Chunk(content=Content(text="a dog barking loudly"), id="q")
    with handler(stack) as search:
        [(_, everything)] = search(chunk)
    assert everything["fields"][0][SOURCE_ID] == "text/note.txt"
    assert len(everything["id"]) == len(DIRECTORY_FILES) + 1

    filtered = handler(stack, filters=Filter.by_property(SOURCE_ID).contains_any(allowed))
    with pickle.loads(pickle.dumps(filtered)) as search:  # as Beam ships it to a worker
        [(_, hits)] = search(chunk)
    assert sorted(f[SOURCE_ID] for f in hits["fields"]) == sorted(allowed)
    # The same objects in the same order as the unfiltered search ranks them.
    assert hits["id"] == [i for i in everything["id"] if i in hits["id"]]
    assert hits["distance"] == sorted(hits["distance"])


def test_limit_distance_and_return_properties(stack, ingested):
    chunk = Chunk(content=Content(text="a dog barking loudly"), id="q")
    with handler(stack, limit=2, return_properties=[SOURCE_ID]) as search:
        [(_, two)] = search(chunk)
    assert len(two["id"]) == 2
    assert all(list(fields) == [SOURCE_ID] for fields in two["fields"])
    first, second = two["distance"]
    assert first < second
    with handler(stack, distance=(first + second) / 2) as search:
        [(_, near)] = search(chunk)
    assert near["id"] == two["id"][:1]


def test_hybrid_gives_scores(stack, ingested, vectors):
    text = Chunk(content=Content(text="a dog barking loudly"), id="t")
    image = Chunk(content=Content(), id="i", embedding=Embedding(vectors["image/cat.jpg"]))
    with handler(stack, hybrid_alpha=0.5, limit=3) as search:
        [(_, hits)] = search(text)
    assert set(hits) == {"id", "score", "fields"}
    assert len(hits["id"]) == 3
    assert hits["fields"][0][SOURCE_ID] == "text/note.txt"  # the words and the vector agree
    assert hits["score"] == sorted(hits["score"], reverse=True) and hits["score"][0] > 0
    # alpha=1 is the vector alone: the near-vector ranking.
    with handler(stack, limit=3) as search:
        [(_, by_vector)] = search(image)
    with handler(stack, hybrid_alpha=1.0, limit=3) as search:
        [(_, by_hybrid)] = search(image)
    assert by_hybrid["id"] == by_vector["id"]
    assert by_vector["fields"][0][SOURCE_ID] == "image/cat.jpg"


def test_dates_and_uuids_come_back_as_strings(stack, client):
    from weaviate.classes.config import Configure, DataType, Property
    from weaviate.classes.data import DataObject

    name = "Dated"
    client.collections.create(
        name,
        properties=[
            Property(name="taken", data_type=DataType.DATE),
            Property(name="other", data_type=DataType.UUID),
            Property(name="tags", data_type=DataType.TEXT_ARRAY),
        ],
        vector_config=Configure.Vectors.self_provided(name="imagebind"),
    )
    taken = datetime.datetime(2024, 5, 1, 12, 30, tzinfo=datetime.UTC)
    other = uuid.uuid4()
    client.collections.get(name).data.insert_many(
        [
            DataObject(
                properties={"taken": taken, "other": other, "tags": ["a", "b"]},
                vector={"imagebind": [1.0, 0.0, 0.0]},
            )
        ]
    )
    e = stack.endpoints
    search = WeaviateSearchEnrichmentHandler(
        name, url=e.weaviate_http, grpc_port=e.weaviate_grpc_port
    )
    chunk = Chunk(content=Content(), id="v", embedding=Embedding([0.9, 0.1, 0.0]))
    with search:
        [(_, hits)] = search(chunk)
    [fields] = hits["fields"]
    assert isinstance(fields["taken"], str)
    assert datetime.datetime.fromisoformat(fields["taken"]) == taken
    assert fields["other"] == str(other) and fields["tags"] == ["a", "b"]
    json.dumps(hits)  # plain Python throughout


def test_a_chunk_with_nothing_to_search_is_a_value_error(stack, ingested):
    good = Chunk(content=Content(text="a dog"), id="good")
    empty = Chunk(content=Content(text=""), id="nothing-here", embedding=Embedding([]))
    with handler(stack) as search:
        with pytest.raises(ValueError, match="'nothing-here' has neither text nor"):
            search([good, empty])
        assert len(search(good)[0][1]["id"]) > 0  # the handler still works


@pytest.mark.parametrize("runner", [IN_PROCESS, "PrismRunner"])
def test_enrichment_fails_on_a_chunk_with_nothing_to_search(stack, ingested, runner):
    # Beam's Enrichment retries only timeouts and quota errors: the ValueError fails the
    # job at once, as itself in process, inside Prism's "job failed" RuntimeError on Prism.
    chunks = [Chunk(content=Content(text="a dog"), id="fine"), Chunk(Content(), id="blank-chunk")]
    with (
        pytest.raises(Exception, match="'blank-chunk' has neither text nor") as failure,
        beam.Pipeline(runner=runner) as pipeline,
    ):
        _ = pipeline | beam.Create(chunks) | Enrichment(handler(stack))
    assert isinstance(failure.value, ValueError) or "ValueError: chunk" in str(failure.value)


def test_unknown_collection_or_vector_fails_when_opened(stack, ingested):
    with pytest.raises(ValueError, match="'Nowhere' does not exist"):
        e = stack.endpoints
        WeaviateSearchEnrichmentHandler(
            "Nowhere", url=e.weaviate_http, grpc_port=e.weaviate_grpc_port
        ).__enter__()
    with pytest.raises(ValueError, match="no vector named 'other' \\(it has imagebind\\)"):
        handler(stack, target_vector="other").__enter__()


def test_options_cache_keys_and_batches_without_weaviate():
    with pytest.raises(ValueError, match="hybrid_alpha"):
        WeaviateSearchEnrichmentHandler("C", hybrid_alpha=1.5)
    with pytest.raises(ValueError, match="consistency_level"):
        WeaviateSearchEnrichmentHandler("C", consistency_level="SOME")
    with pytest.raises(ValueError, match="2 ports for 3"):
        WeaviateSearchEnrichmentHandler(
            "C", url="http://a:1,http://b:1,http://c:1", grpc_port="5,6"
        )
    search = WeaviateSearchEnrichmentHandler(
        "C", url="http://a:8080,http://b:8080", min_batch_size=2, max_batch_size=7
    )
    assert search.nodes == [("http://a:8080", 50051), ("http://b:8080", 50051)]
    assert search.batch_elements_kwargs() == {"min_batch_size": 2, "max_batch_size": 7}
    assert search.use_custom_types

    one = Chunk(content=Content(text="x"), id="1", embedding=Embedding([0.1, 0.2]))
    same = Chunk(content=Content(text="x"), id="1", embedding=Embedding([0.1, 0.2]))
    other_vector = Chunk(content=Content(text="x"), id="1", embedding=Embedding([0.1, 0.3]))
    other_text = Chunk(content=Content(text="y"), id="1", embedding=Embedding([0.1, 0.2]))
    assert search.get_cache_key(one) == search.get_cache_key(same)
    keys = {search.get_cache_key(c) for c in (one, other_vector, other_text)}
    assert len(keys) == 3
    assert search.get_cache_key([one, other_text]) == [
        search.get_cache_key(one),
        search.get_cache_key(other_text),
    ]
    assert search([]) == []
    with pytest.raises(RuntimeError, match="not open"):
        search(one)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_a_dead_node_is_passed_over(stack, ingested):
    e = stack.endpoints
    dead = free_port()
    chunk = Chunk(content=Content(text="a dog barking loudly"), id="q")
    cluster = WeaviateSearchEnrichmentHandler(
        COLLECTION,
        url=f"http://127.0.0.1:{dead},{e.weaviate_http}",
        grpc_port=f"{free_port()},{e.weaviate_grpc_port}",
        limit=3,
    )
    with cluster, handler(stack, limit=3) as single:
        assert cluster.nodes[cluster._node][0] == e.weaviate_http
        assert cluster(chunk)[0][1] == single(chunk)[0][1]


def test_a_failed_search_is_asked_again_on_the_next_node(stack, ingested, caplog):
    from weaviate.exceptions import WeaviateConnectionError

    e = stack.endpoints
    twice = WeaviateSearchEnrichmentHandler(  # one node listed twice: "the next node" is real
        COLLECTION, url=f"{e.weaviate_http},{e.weaviate_http}", grpc_port=e.weaviate_grpc_port
    )
    calls = []

    def flaky(collection):
        calls.append(collection)
        if len(calls) == 1:
            raise WeaviateConnectionError("connection reset")
        return collection.query.fetch_objects(limit=2)

    chunk = Chunk(content=Content(text="x"), id="q")
    with twice, caplog.at_level(logging.WARNING):
        first = twice._client
        result = twice._run(flaky, chunk)
        assert twice._node == 1 and twice._client is not first and twice._retired == [first]
    assert len(calls) == 2 and calls[0] is not calls[1]
    assert len(result["id"]) == 2
    assert any("retry 1/" in r.getMessage() for r in caplog.records)


def test_a_bad_query_is_not_asked_again(stack, ingested, caplog):
    from weaviate.exceptions import WeaviateQueryError

    wrong = handler(stack, filters=Filter.by_property("no_such_property").equal("x"))
    chunk = Chunk(content=Content(text="a dog"), id="q")
    with wrong, caplog.at_level(logging.WARNING), pytest.raises(WeaviateQueryError):
        wrong(chunk)
    assert not any("retry" in r.getMessage() for r in caplog.records)
