"""``pipelines.beam`` as a Beam user composes it: public names only, the real Weaviate.

Every vector a pipeline stores is compared with ``ib-vectorizer embed``'s for
the same file; every pipeline runs on the DirectRunner and on Prism.
"""

from __future__ import annotations

import json
from pathlib import Path

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.ml.inference.base import KeyedModelHandler, PredictionResult, RunInference
from apache_beam.ml.rag.ingestion.base import VectorDatabaseWriteTransform
from apache_beam.ml.rag.types import Chunk, Content, Embedding
from apache_beam.ml.transforms.base import MLTransform

from pipelines.beam import (
    ImageBindEmbeddings,
    ImageBindModelHandler,
    ReadFromWeaviate,
    WeaviateWriteConfig,
    WriteToWeaviate,
    object_uuid,
)

from .fixture_data import INPUTS
from .server_process import TINY_ENV
from .test_cli import embed as cli_embed

TINY = {"model": TINY_ENV["IB_MODEL"], "checkpoint": TINY_ENV["IB_CHECKPOINT"]}
MEDIA = {  # modality → fixture files
    "image": ["image_rgb.jpg", "image_gray.png"],
    "audio": ["tone_16k_mono.wav", "chirp_44k_stereo.wav"],
    "video": ["video_a.mp4"],
    "depth": ["depth_a.png"],
    "thermal": ["thermal_a.jpg"],
    "imu": ["imu_2000.csv"],
}
TEXTS = ["a dog barking loudly", "rain on a tin roof"]
CLI_MODALITY = {"image": "vision"}  # ib-vectorizer embed says vision for images
# Beam 2.70's DirectRunner hands a pipeline Prism supports to Prism: FnApiRunner is the
# in-process runner it otherwise uses.
RUNNERS = ["FnApiRunner", "PrismRunner"]


def cli_vectors(tmp_path: Path, modality: str, inputs: list[str]) -> np.ndarray:
    """``ib-vectorizer embed`` (tiny model) of ``inputs``: unit vectors, in order."""
    return cli_embed(tmp_path, CLI_MODALITY.get(modality, modality), inputs)


def stored_vector(client, collection: str, object_id: str) -> np.ndarray:
    obj = client.collections.get(collection).query.fetch_object_by_id(
        object_uuid(object_id), include_vector=True
    )
    assert obj is not None, f"{object_id} is not in {collection}"
    return np.asarray(obj.vector["imagebind"])


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def read_jsonl(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def weaviate(stack) -> dict:
    e = stack.endpoints
    return {"url": e.weaviate_http, "grpc_port": e.weaviate_grpc_port}


def to_chunk(result, modality: str) -> Chunk:
    """A RunInference result (keyed or not) → a Chunk whose id is the item's name."""
    keyed = not isinstance(result, PredictionResult)
    name, prediction = result if keyed else (result.example, result)
    return Chunk(
        id=f"{modality}/{Path(name).name if modality != 'text' else name}",
        content=Content(text=name if modality == "text" else None),
        metadata={"modality": modality},
        embedding=Embedding(dense_embedding=prediction.inference.tolist()),
    )


def dead_letter(failed) -> str:
    """Beam's dead letter (element, (type, repr, traceback)) as one JSON line."""
    element, (_, message, _) = failed
    key = element[0] if isinstance(element, tuple) else element
    if isinstance(key, bytes):
        key = f"{len(key)} bytes"
    return json.dumps({"item": str(key), "error": str(message)})


@pytest.mark.parametrize("runner", RUNNERS)
def test_run_inference_of_every_modality_into_weaviate(stack, client, tmp_path, runner):
    """RunInference → VectorDatabaseWriteTransform(WeaviateWriteConfig): stored vectors are
    ib-vectorizer embed's, and an unusable file fails alone, with its reason."""
    collection = f"Plugin{runner.removesuffix('Runner')}"
    bad = tmp_path / "broken.wav"
    bad.write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk" * 10)
    failed_path, write_failures = tmp_path / "failed.jsonl", tmp_path / "write.jsonl"
    with beam.Pipeline(runner=runner) as pipeline:
        chunks, dead = [], []
        for modality, names in MEDIA.items():
            paths = [str(INPUTS / name) for name in names]
            if modality == "audio":
                paths.append(str(bad))
            handler = ImageBindModelHandler(modality, max_batch_views=8, **TINY)
            if modality == "image":  # bytes, keyed by name: Beam's KeyedModelHandler
                items = [(p, Path(p).read_bytes()) for p in paths]
                handler = handler.keyed()
            else:
                items = paths
            results, failed = (
                pipeline
                | f"Items {modality}" >> beam.Create(items)
                | f"Embed {modality}" >> RunInference(handler).with_exception_handling()
            )
            chunks.append(results | f"Chunks {modality}" >> beam.Map(to_chunk, modality))
            dead.append(failed.failed_preprocessing[0])
            dead.append(failed.failed_inferences)
        texts, failed = (
            pipeline
            | "Texts" >> beam.Create(TEXTS)
            | "Embed text"
            >> RunInference(ImageBindModelHandler("text", **TINY)).with_exception_handling()
        )
        chunks.append(texts | "Chunks text" >> beam.Map(to_chunk, "text"))
        config = WeaviateWriteConfig(collection, **weaviate(stack))
        written = tuple(chunks) | beam.Flatten() | VectorDatabaseWriteTransform(config)
        _ = (
            written
            | "WriteFailures" >> beam.Map(lambda f: json.dumps(f.as_dict()))
            | "Save1" >> beam.io.WriteToText(str(write_failures), shard_name_template="")
        )
        _ = (
            (*dead, failed.failed_inferences)
            | "Dead" >> beam.Flatten()
            | "AsJson" >> beam.Map(dead_letter)
            | "Save2" >> beam.io.WriteToText(str(failed_path), shard_name_template="")
        )

    failures = read_jsonl(failed_path)
    assert [f["item"] for f in failures] == [str(bad)]
    assert "broken.wav" in failures[0]["error"] and "audio" in failures[0]["error"]
    assert read_jsonl(write_failures) == []
    total = sum(len(names) for names in MEDIA.values()) + len(TEXTS)
    stored = client.collections.get(collection)
    assert stored.aggregate.over_all(total_count=True).total_count == total
    for modality, names in MEDIA.items():
        expected = cli_vectors(tmp_path, modality, [str(INPUTS / n) for n in names])
        for name, vector in zip(names, expected, strict=True):
            got = stored_vector(client, collection, f"{modality}/{name}")
            assert cosine(got, vector) >= 0.9999, (modality, name)
    for text, vector in zip(TEXTS, cli_vectors(tmp_path, "text", TEXTS), strict=True):
        assert cosine(stored_vector(client, collection, f"text/{text}"), vector) >= 0.9999
    obj = stored.query.fetch_object_by_id(object_uuid("depth/depth_a.png"))
    assert obj.properties["modality"] == "depth" and obj.properties["chunk_index"] == 0


def test_keyed_model_handler_without_per_item_decoding_fails_the_batch_naming_the_item(
    tmp_path,
):
    """Beam's KeyedModelHandler around the handler itself: decoding in the batch, so an
    unusable item fails its batch (failed_inferences) with a reason naming it."""
    handler = KeyedModelHandler(
        ImageBindModelHandler("depth", decode_before_batching=False, max_batch_views=1, **TINY)
    )
    good = str(INPUTS / "depth_a.png")
    out, failed_out = tmp_path / "out.jsonl", tmp_path / "failed.jsonl"
    with beam.Pipeline() as pipeline:
        results, failed = (
            pipeline
            | beam.Create([("good", good), ("missing", str(tmp_path / "nope.png"))])
            | RunInference(handler).with_exception_handling()
        )
        _ = (
            results
            | "Keys" >> beam.Map(lambda kv: json.dumps([kv[0], kv[1].inference.shape[0]]))
            | "Save" >> beam.io.WriteToText(str(out), shard_name_template="")
        )
        _ = (
            failed.failed_inferences
            | "Why" >> beam.Map(lambda f: json.dumps([[k for k, _ in f[0]], f[1][1]]))
            | "SaveFailed" >> beam.io.WriteToText(str(failed_out), shard_name_template="")
        )
    assert [key for key, _ in read_jsonl(out)] == ["good"]
    (keys, reason), *_ = read_jsonl(failed_out)
    assert keys == ["missing"] and "nope.png" in reason and "cannot read it" in reason


@pytest.mark.parametrize("runner", RUNNERS)
def test_mltransform_embeddings_of_text_and_image_chunks(stack, client, tmp_path, runner):
    """Beam's RAG flow unchanged: Chunks → MLTransform(ImageBindEmbeddings) →
    VectorDatabaseWriteTransform(WeaviateWriteConfig)."""
    collection = f"Rag{runner.removesuffix('Runner')}"
    photos = [str(INPUTS / "image_rgb.jpg"), str(INPUTS / "thermal_a.jpg")]
    texts = [Chunk(id=f"t{i}", content=Content(text=t)) for i, t in enumerate(TEXTS)]
    images = [Chunk(id=f"p{i}", content=Content(text=p)) for i, p in enumerate(photos)]
    with beam.Pipeline(runner=runner) as pipeline:
        embedded = []
        for name, chunks, modality in (("text", texts, "text"), ("image", images, "image")):
            embedded.append(
                pipeline
                | f"Create {name}" >> beam.Create(chunks)
                | f"Embed {name}"
                >> MLTransform(write_artifact_location=str(tmp_path / name)).with_transform(
                    ImageBindEmbeddings(modality, **TINY)
                )
            )
        config = WeaviateWriteConfig(collection, **weaviate(stack))
        _ = tuple(embedded) | beam.Flatten() | VectorDatabaseWriteTransform(config)
    for i, vector in enumerate(cli_vectors(tmp_path, "text", TEXTS)):
        assert cosine(stored_vector(client, collection, f"t{i}"), vector) >= 0.9999
    for i, vector in enumerate(cli_vectors(tmp_path, "image", photos)):
        assert cosine(stored_vector(client, collection, f"p{i}"), vector) >= 0.9999
    stored = client.collections.get(collection).query.fetch_object_by_id(object_uuid("t0"))
    assert stored.properties["content"] == TEXTS[0]


def test_write_and_read_dicts_per_tenant(stack, client, tmp_path):
    """WriteToWeaviate over dicts (tenants made on demand), ReadFromWeaviate back by cursor;
    an object without an id is a failure, the others are written."""
    rng = np.random.default_rng(3)
    objects = {
        tenant: [
            {"id": f"{tenant}-{i}", "properties": {"n": i}, "vector": rng.normal(size=16)}
            for i in range(25)
        ]
        for tenant in ("alpha", "beta")
    }
    failures_path = tmp_path / "failures.jsonl"
    with beam.Pipeline() as pipeline:
        failures = []
        for tenant, rows in objects.items():
            failures.append(
                pipeline
                | f"Rows {tenant}" >> beam.Create([*rows, {"properties": {"n": -1}}])
                | f"Write {tenant}"
                >> WriteToWeaviate(
                    "Tenanted",
                    tenant=tenant,
                    create_collection=True,
                    batch_size=10,
                    **weaviate(stack),
                )
            )
        _ = (
            tuple(failures)
            | beam.Flatten()
            | beam.Map(lambda f: json.dumps(f.as_dict()))
            | beam.io.WriteToText(str(failures_path), shard_name_template="")
        )
    failures = read_jsonl(failures_path)
    assert len(failures) == 2 and all('neither an "id"' in f["error"] for f in failures)

    read_path = tmp_path / "read.jsonl"
    with beam.Pipeline(runner="PrismRunner") as pipeline:
        _ = (
            pipeline
            | ReadFromWeaviate(
                "Tenanted", tenant=["alpha", "beta"], include_vector=True, **weaviate(stack)
            )
            | beam.Map(json.dumps)
            | beam.io.WriteToText(str(read_path), shard_name_template="")
        )
    read = {row["uuid"]: row for row in read_jsonl(read_path)}
    assert len(read) == 50
    for tenant, rows in objects.items():
        for row in rows:
            got = read[object_uuid(row["id"])]
            assert got["tenant"] == tenant and got["properties"]["n"] == row["properties"]["n"]
            np.testing.assert_allclose(got["vector"]["imagebind"], row["vector"], rtol=1e-6)
