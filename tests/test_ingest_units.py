"""Units of the ingestion pipeline's own logic (no Beam runner, no Weaviate)."""

from __future__ import annotations

import traceback

import numpy as np
import pytest
from weaviate.util import generate_uuid5

from ib_vectorizer.modalities import Modality
from ib_vectorizer.options import ModelOptions
from pipelines.beam.write import to_data_object
from pipelines.ingest.elements import ReadyObject
from pipelines.ingest.inputs import InputSpec
from pipelines.ingest.pipeline import IngestConfig, _batch_failures, to_weaviate_object
from pipelines.schema import MediaField

FIELDS = (MediaField("image", Modality.VISION), MediaField("text", Modality.TEXT))


def config(store_uri: bool = False) -> IngestConfig:
    return IngestConfig(
        spec=InputSpec("x.jsonl"),
        collection="C",
        embed="local",
        fields=FIELDS,
        model=ModelOptions(model="m"),
        vectorizer_url=None,
        batch_size=8,
        max_batch_views=8,
        store_uri=store_uri,
        share_model=False,
    )


def ready(**media) -> ReadyObject:
    modalities = {"image": Modality.VISION, "text": Modality.TEXT, "image_back": Modality.VISION}
    return ReadyObject(
        source_id="id-1",
        source="m.jsonl:line 3",
        properties={"year": 2020},
        media=media,
        modalities={k: modalities[k] for k in media},
        uris={"image": "gs://b/i.jpg"} if "image" in media else {},
    )


def _as_beam_reports_it(err: BaseException) -> tuple:
    """RunInference's dead-letter form of an exception: (type, repr, formatted traceback)."""
    try:
        raise err
    except BaseException as raised:
        return type(raised), repr(raised), traceback.format_exception(raised)


def test_embed_failures_carry_a_sentence_with_the_exception_text_not_a_tuple():
    batch = [ready(text="a"), ready(text="b")]
    failures = _batch_failures((batch, _as_beam_reports_it(RuntimeError("CUDA error: bad kernel"))))
    assert [f.stage for f in failures] == ["embed", "embed"]
    assert failures[0].error == (
        "embedding its batch failed unexpectedly (RuntimeError: CUDA error: bad kernel)"
    )
    (failure,) = _batch_failures(([ready(text="a")], _as_beam_reports_it(MemoryError())))
    assert failure.error == "embedding its batch ran out of memory"


def test_object_properties_vector_and_id():
    obj = to_weaviate_object(
        ready(image=b"\x01\x02", text="hi"), {"image": np.ones(2), "text": np.zeros(2)}, config()
    )
    assert obj["properties"] == {
        "year": 2020,
        "source_id": "id-1",
        "modality": ["image", "text"],
        "image": "AQI=",
        "text": "hi",
    }
    np.testing.assert_allclose(obj["vector"], [0.5, 0.5])
    written = to_data_object(obj, "imagebind")
    assert written.uuid == str(generate_uuid5("id-1"))  # the same id → the same object
    np.testing.assert_allclose(written.vector["imagebind"], [0.5, 0.5])


def test_store_uri_keeps_the_uri_and_drops_the_bytes():
    obj = to_weaviate_object(ready(image=b"\x01", text="hi"), None, config(store_uri=True))
    assert obj["properties"]["image_uri"] == "gs://b/i.jpg" and "image" not in obj["properties"]
    assert obj["vector"] is None


def test_a_field_the_collection_does_not_know_is_not_combined():
    # e.g. a JSONL key first seen after the rows that planned the collection
    obj = to_weaviate_object(ready(image_back=b"\x01"), {"image_back": np.ones(2)}, config())
    assert obj["vector"] is None  # Weaviate decides (and the write stage reports it)


def test_a_fast_image_decode_changes_the_fingerprint_and_exact_keeps_the_old_one():
    from dataclasses import replace

    from pipelines.ingest.incremental import model_fingerprint

    options = ModelOptions(random_weights=True)
    exact = model_fingerprint("local", options, FIELDS, None)
    fast = model_fingerprint("local", replace(options, image_decode="fast"), FIELDS, None)
    assert exact != fast
    meta = {"model": "imagebind_huge", "checkpoint": "x", "embeddingDim": 1024, "normalized": True}
    before = model_fingerprint("server", options, FIELDS, meta)  # a server without the key
    assert model_fingerprint("server", options, FIELDS, {**meta, "imageDecode": "exact"}) == before
    assert model_fingerprint("server", options, FIELDS, {**meta, "imageDecode": "fast"}) != before


def test_int8_changes_the_fingerprint_and_none_keeps_the_old_one():
    from dataclasses import replace

    from pipelines.ingest.incremental import model_fingerprint

    options = ModelOptions(random_weights=True)
    float32 = model_fingerprint("local", options, FIELDS, None)
    assert model_fingerprint("local", replace(options, quantize="int8"), FIELDS, None) != float32
    meta = {"model": "imagebind_huge", "checkpoint": "x", "embeddingDim": 1024, "normalized": True}
    before = model_fingerprint("server", options, FIELDS, meta)  # a server without the key
    assert model_fingerprint("server", options, FIELDS, {**meta, "quantize": "none"}) == before
    assert model_fingerprint("server", options, FIELDS, {**meta, "quantize": "int8"}) != before


def test_weaviate_nodes_are_urls_with_their_grpc_ports():
    from pipelines.connection import parse_nodes

    assert parse_nodes("http://a:8080", "50051") == [("http://a:8080", 50051)]
    assert parse_nodes("http://a:8080,http://b:8081", 50051) == [
        ("http://a:8080", 50051),
        ("http://b:8081", 50051),
    ]
    assert parse_nodes(" http://a:1 , http://b:2 ", "7,8") == [("http://a:1", 7), ("http://b:2", 8)]
    with pytest.raises(ValueError, match="gives 2 ports for 3 Weaviate URLs"):
        parse_nodes("http://a:1,http://b:2,http://c:3", "7,8")
    with pytest.raises(ValueError, match="is not a URL"):
        parse_nodes("a:1", "7")
    with pytest.raises(ValueError, match="not a port"):
        parse_nodes("http://a:1", "seven")
