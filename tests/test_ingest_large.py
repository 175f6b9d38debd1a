"""Large objects: writes stay under Weaviate's gRPC message cap; 12-megapixel photos ingest."""

from __future__ import annotations

import base64

import numpy as np
from weaviate.classes.config import DataType

from ib_vectorizer.bench.payloads import image_payload
from ib_vectorizer.modalities import Modality
from pipelines.beam.failures import FAILURES
from pipelines.beam.target import WeaviateTarget
from pipelines.beam.write import (
    MAX_BATCH_BYTES,
    MAX_OBJECT_BYTES,
    _WriteDoFn,
    approx_bytes,
)
from pipelines.schema import MediaField, create_bind_collection

from .test_ingest import cosine, count, run_ingest, server_vector, stored


class RecordingWrite(_WriteDoFn):
    """The real write step, noting the size of every batch it sends."""

    def _insert(self, batch):
        self.sent.append(sum(approx_bytes(obj) for obj, _ in batch))
        return super()._insert(batch)


def blob_object(i: int, mib: float) -> dict:
    payload = base64.b64encode(b"\x00" * int(mib * 2**20 * 3 / 4)).decode()
    return {
        "id": f"blob-{i}",
        "source": f"blob-{i}.bin",
        "properties": {"payload": payload, "source_id": f"blob-{i}"},
        "vector": [float(i + 1)] * 32,
    }


def test_batches_are_cut_by_bytes_and_an_oversized_object_is_dead_lettered(stack, client):
    fields = [MediaField("image", Modality.VISION)]
    create_bind_collection(client, "Large", fields, {"payload": DataType.BLOB})
    e = stack.endpoints
    target = WeaviateTarget(e.weaviate_http, e.weaviate_grpc_port, "Large")
    write = RecordingWrite(target, "imagebind", 64, create_collection=False, metrics_namespace="t")
    write.sent = []
    sizes = [20, 20, 20, 0.001, 0.001, 40, 100]  # MiB; the last is more than one message
    write.setup()
    try:
        write.start_bundle()
        outputs = [out for i, mib in enumerate(sizes) for out in write.process(blob_object(i, mib))]
        outputs += list(write.finish_bundle())
    finally:
        write.teardown()
    failures = [out.value for out in outputs if out.tag == FAILURES]
    assert [f.id for f in failures] == ["blob-6"]
    assert "--store-uri" in failures[0].error and "gRPC" in failures[0].error
    assert len(write.sent) >= 3 and max(write.sent) <= MAX_BATCH_BYTES < MAX_OBJECT_BYTES
    assert count(client, "Large") == len(sizes) - 1


def test_twelve_megapixel_photos_ingest(stack, client, tmp_path):
    rng = np.random.default_rng(12)
    (tmp_path / "photos" / "image").mkdir(parents=True)
    photos = {}
    for i in range(3):
        photos[f"image/{i}.jpg"] = image_payload(rng, size=(4000, 3000))
        (tmp_path / "photos" / f"image/{i}.jpg").write_bytes(photos[f"image/{i}.jpg"])
    assert min(len(p) for p in photos.values()) > 2_000_000  # real-photo sized files
    assert run_ingest(stack, tmp_path / "photos", "TwelveMP", tmp_path / "f.jsonl") == 0
    assert count(client, "TwelveMP") == 3
    collection = client.collections.get("TwelveMP")
    for source_id, data in photos.items():
        expected = server_vector(stack, Modality.VISION, data)
        assert cosine(stored(collection, source_id), expected) >= 0.9999
