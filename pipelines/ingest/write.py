"""``WriteToWeaviate``: idempotent batched writes, failures reported per object.

One weaviate-client per DoFn instance (``setup``/``teardown``); objects are
buffered and written with ``insert_many`` (one gRPC message) when the buffer
holds ``batch_size`` objects or 48 MiB, and at the end of every bundle, so no
write nears weaviate-client's ~100 MB gRPC message cap. An object that alone
would exceed it is not sent: it goes to the ``failures`` output saying so (and
that ``--store-uri`` stores it by URI). An object's uuid is
``generate_uuid5(source_id)``, so writing it again replaces it, and a retry
never duplicates.

A cluster is given as several nodes: when a call fails (a node dying, a
reset connection, a timeout) the DoFn moves to the next node that answers
and retries, with exponential backoff and jitter. Objects Weaviate rejects
one by one (a replica out of reach, a consistency level not met) are written
again a few times before they go to the ``failures`` output with Weaviate's
message.
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass
from typing import Any

import apache_beam as beam
from apache_beam.transforms.window import GlobalWindows

from ib_vectorizer.retry import Backoff, call_with_retries, first_line

from ..connection import Node, connect_first, with_consistency
from .objects import Failure
from .progress import JobCounter

log = logging.getLogger(__name__)

FAILURES = "failures"
# weaviate-client sends one insert_many as one gRPC message, capped at about 100 MB.
MAX_BATCH_BYTES = 48 * 1024 * 1024  # a batch is cut before it grows past this
MAX_OBJECT_BYTES = 96 * 1024 * 1024  # one object alone may use all but the framing
BACKOFF = Backoff(attempts=5, base_s=1.0, max_s=30.0)
# Objects rejected one by one are written again this often, waiting as BACKOFF does.
OBJECT_ATTEMPTS = 4


@dataclass(frozen=True)
class WeaviateTarget:
    """Where to write: Weaviate's HTTP URL and gRPC port (more nodes of a cluster after
    them), the collection, and the consistency level of reads and writes."""

    url: str
    grpc_port: int
    collection: str
    api_key: str | None = None
    other_nodes: tuple[Node, ...] = ()
    consistency_level: str | None = None  # ONE, QUORUM, ALL; None: Weaviate's (QUORUM)

    @property
    def nodes(self) -> list[Node]:
        return [(self.url, self.grpc_port), *self.other_nodes]

    def connect(self, start: int = 0):
        """A client for the first node that answers, from node ``start`` on."""
        return connect_first(self.nodes, self.api_key, start)[0]

    def collection_of(self, client):
        return with_consistency(client.collections.get(self.collection), self.consistency_level)


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
    """A DoFn with its own weaviate-client and the target collection, for its lifetime.

    :meth:`call` runs an operation on the collection with retries, moving to
    the next node of the target after each failure.
    """

    def __init__(self, target: WeaviateTarget) -> None:
        self.target = target

    def setup(self) -> None:
        self._client = None
        self._node = 0
        self._connect(0)

    def teardown(self) -> None:
        self._close()

    def call(self, operation, what: str):
        """``operation(collection)``, retried with backoff; after a failure, on the next node."""
        failed = False

        def attempt():
            nonlocal failed
            if failed:
                self._close()
                self._connect(self._node + 1)
            failed = True
            result = operation(self._collection)
            failed = False
            return result

        return call_with_retries(
            attempt, retryable=lambda err: True, backoff=BACKOFF, what=what, log=log
        )

    def _connect(self, start: int) -> None:
        nodes = self.target.nodes
        self._client, self._node = connect_first(nodes, self.target.api_key, start % len(nodes))
        self._collection = self.target.collection_of(self._client)
        if len(nodes) > 1:
            log.info("writing through weaviate %s", nodes[self._node][0])

    def _close(self) -> None:
        client, self._client = getattr(self, "_client", None), None
        if client is not None:
            with contextlib.suppress(Exception):  # a dead node's client may fail to close
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
        """Write ``batch``; the objects that failed, with why.

        Objects Weaviate rejects one by one are sent again (alone, without the
        written ones) up to ``OBJECT_ATTEMPTS`` times, for the rejections that
        pass: a replica that was just lost, a consistency level not met yet.
        """
        pending, rejected = batch, []
        for attempt in range(OBJECT_ATTEMPTS):
            if attempt:
                time.sleep(BACKOFF.delay(attempt - 1))
            try:
                errors = self._insert_once(pending)
            except Exception as err:
                reason = f"write failed after {BACKOFF.attempts} tries: {first_line(err)}"
                return [(o, reason) for o in pending]
            self.written.inc(len(pending) - len(errors))
            rejected = [(pending[i], message) for i, message in sorted(errors.items())]
            if not rejected:
                return []
            log.warning(
                "%d of %d objects rejected (%s); %s",
                len(rejected),
                len(pending),
                rejected[0][1],
                "writing them again" if attempt + 1 < OBJECT_ATTEMPTS else "giving up",
            )
            pending = [obj for obj, _ in rejected]
        return rejected

    def _insert_once(self, batch: list[WeaviateObject]) -> dict[int, str]:
        """One ``insert_many`` (retried on other nodes if the call fails): rejections by index."""
        from weaviate.classes.data import DataObject

        objects = [
            DataObject(
                properties=o.properties,
                uuid=o.uuid,
                vector={o.vector_name: o.vector} if o.vector is not None else None,
            )
            for o in batch
        ]
        result = self.call(
            lambda collection: collection.data.insert_many(objects),
            what=f"writing {len(batch)} objects",
        )
        return {i: error.message for i, error in result.errors.items()}


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
