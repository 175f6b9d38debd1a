"""``WriteToWeaviate``: idempotent batched writes, failures reported per object.

One weaviate-client per DoFn instance (``setup``/``teardown``); objects are
buffered and written with ``insert_many`` (one gRPC message) when the buffer
holds ``batch_size`` objects or 48 MiB, and at the end of every bundle, so no
write nears weaviate-client's ~100 MB gRPC message cap. An object that alone
would exceed it is not sent: it goes to the ``failures`` output saying so (and
that ``--store-uri`` stores it by URI). An object's uuid is
``generate_uuid5(source_id)``, so writing it again replaces it. Connection
errors and timeouts are retried with exponential backoff and jitter; an object
Weaviate rejects goes to the ``failures`` output with Weaviate's message.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import apache_beam as beam
from apache_beam.transforms.window import GlobalWindows

from ib_vectorizer.retry import Backoff, call_with_retries, first_line

from ..connection import connect_weaviate
from .objects import Failure
from .progress import JobCounter

log = logging.getLogger(__name__)

FAILURES = "failures"
# weaviate-client sends one insert_many as one gRPC message, capped at about 100 MB.
MAX_BATCH_BYTES = 48 * 1024 * 1024  # a batch is cut before it grows past this
MAX_OBJECT_BYTES = 96 * 1024 * 1024  # one object alone may use all but the framing
BACKOFF = Backoff(attempts=5, base_s=1.0, max_s=30.0)


@dataclass(frozen=True)
class WeaviateTarget:
    """Where to write: Weaviate's HTTP URL and gRPC port, and the collection."""

    url: str
    grpc_port: int
    collection: str
    api_key: str | None = None

    def connect(self):
        return connect_weaviate(self.url, self.grpc_port, self.api_key)


@dataclass
class WeaviateObject:
    uuid: str
    source_id: str
    source: str
    properties: dict[str, Any]
    vector: list[float] | None  # None: Weaviate vectorizes it through the module
    vector_name: str

    def approx_bytes(self) -> int:
        size = 64 + 8 * len(self.vector or ())
        for value in self.properties.values():
            size += len(value) if isinstance(value, str | bytes) else 16
        return size


class CollectionDoFn(beam.DoFn):
    """A DoFn with its own weaviate-client and the target collection, for its lifetime."""

    def __init__(self, target: WeaviateTarget) -> None:
        self.target = target

    def setup(self) -> None:
        self._client = self.target.connect()
        self._collection = self._client.collections.get(self.target.collection)

    def teardown(self) -> None:
        client = getattr(self, "_client", None)
        if client is not None:
            client.close()


class _WriteDoFn(CollectionDoFn):
    def __init__(self, target: WeaviateTarget, batch_size: int) -> None:
        super().__init__(target)
        self.batch_size = batch_size
        self.written = JobCounter("written")
        self.failed = JobCounter("failed")

    def start_bundle(self) -> None:
        self._buffer: list[WeaviateObject] = []
        self._buffer_bytes = 0

    def process(self, obj: WeaviateObject):
        size = obj.approx_bytes()
        if size > MAX_OBJECT_BYTES:
            self.failed.inc()
            reason = (
                f"object is {size / 2**20:.0f} MiB, more than one write to Weaviate can carry "
                f"({MAX_OBJECT_BYTES / 2**20:.0f} MiB under its ~100 MB gRPC message limit); "
                "ingest it with --store-uri to store its URI instead of its bytes"
            )
            yield beam.pvalue.TaggedOutput(
                FAILURES, Failure(obj.source_id, obj.source, "write", reason)
            )
            return
        if self._buffer and self._buffer_bytes + size > MAX_BATCH_BYTES:
            yield from self._flush()  # this object would push the batch past the cap
        self._buffer.append(obj)
        self._buffer_bytes += size
        if len(self._buffer) >= self.batch_size or self._buffer_bytes >= MAX_BATCH_BYTES:
            yield from self._flush()

    def finish_bundle(self):
        for output in self._flush():  # outside process(): outputs need an explicit window
            yield beam.pvalue.TaggedOutput(output.tag, GlobalWindows.windowed_value(output.value))

    def _flush(self):
        batch, self._buffer, self._buffer_bytes = self._buffer, [], 0
        if not batch:
            return
        for obj, error in self._insert(batch):
            self.failed.inc()
            yield beam.pvalue.TaggedOutput(
                FAILURES, Failure(obj.source_id, obj.source, "write", error)
            )

    def _insert(self, batch: list[WeaviateObject]) -> list[tuple[WeaviateObject, str]]:
        """Write ``batch``; the objects that failed, with why."""
        from weaviate.classes.data import DataObject

        objects = [
            DataObject(
                properties=o.properties,
                uuid=o.uuid,
                vector={o.vector_name: o.vector} if o.vector is not None else None,
            )
            for o in batch
        ]
        try:  # any exception is transient here: a reset connection, a timeout, a busy node
            result = call_with_retries(
                lambda: self._collection.data.insert_many(objects),
                retryable=lambda err: True,
                backoff=BACKOFF,
                what=f"writing {len(batch)} objects",
                log=log,
            )
        except Exception as err:
            reason = f"write failed after {BACKOFF.attempts} tries: {first_line(err)}"
            return [(o, reason) for o in batch]
        failed = [(batch[i], error.message) for i, error in result.errors.items()]
        self.written.inc(len(batch) - len(failed))
        return failed


class WriteToWeaviate(beam.PTransform):
    """PCollection[WeaviateObject] → the PCollection of write Failures."""

    def __init__(self, target: WeaviateTarget, batch_size: int = 64) -> None:
        super().__init__()
        self.target = target
        self.batch_size = batch_size

    def expand(self, objects):
        results = objects | "Write" >> beam.ParDo(
            _WriteDoFn(self.target, self.batch_size)
        ).with_outputs(FAILURES, main="done")
        return results[FAILURES]
