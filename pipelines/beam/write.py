"""Writing to Weaviate: idempotent batched writes, failures reported per object.

:class:`WriteToWeaviate` takes plain dicts; :class:`WeaviateWriteConfig`
plugs the same writer into Beam's RAG ingestion
(``VectorDatabaseWriteTransform``), writing ``Chunk``\\ s. Both return the
PCollection of :class:`~.failures.Failure`\\ s, one per object not written.

An object is a dict::

    {"id": "photos/cat.jpg",          # its uuid is uuid5(id): writing it again replaces it
     "properties": {...},             # optional
     "vector": [...],                 # optional: the named vector ``vector_name``
     "vectors": {"name": [...]},      # optional: more named vectors
     "uuid": "...",                   # optional: a uuid of your own instead of uuid5(id)
     "source": "gs://..."}            # optional: where it came from, for failure reports

Objects are buffered per DoFn and written with ``insert_many`` (one gRPC
message) when the buffer holds ``batch_size`` objects or 48 MiB, and at the
end of every bundle, so no write nears weaviate-client's ~100 MB gRPC
message cap; an object that alone would pass it is a failure saying so. A
call that fails (a node dying, a reset connection, a timeout) is tried again
with exponential backoff and jitter, on the next node of a cluster. Objects
Weaviate rejects one by one (a replica out of reach, a consistency level
not met) are written again a few times before they become failures with
Weaviate's message.
"""

from __future__ import annotations

import base64
import logging
import math
import time
from collections.abc import Mapping
from typing import Any

import apache_beam as beam
from apache_beam.ml.rag.ingestion.base import VectorDatabaseWriteConfig
from apache_beam.ml.rag.types import Chunk
from apache_beam.transforms.window import GlobalWindows

from ib_vectorizer.retry import first_line

from ..schema import DEFAULT_VECTOR_NAME, ensure_tenant
from .counters import DEFAULT_NAMESPACE, Counter
from .failures import FAILURES, Failure
from .target import BACKOFF, CollectionDoFn, WeaviateTarget

log = logging.getLogger(__name__)

# weaviate-client sends one insert_many as one gRPC message, capped at about 100 MB.
MAX_BATCH_BYTES = 48 * 1024 * 1024  # a batch is cut before it grows past this
MAX_OBJECT_BYTES = 96 * 1024 * 1024  # one object alone may use all but the framing
# Objects rejected one by one are written again this often, waiting as BACKOFF does.
OBJECT_ATTEMPTS = 4


def object_uuid(object_id: str) -> str:
    """The Weaviate id of the object made from ``object_id``: the same on every run."""
    from weaviate.util import generate_uuid5

    return str(generate_uuid5(object_id))


def _label(obj: Mapping[str, Any]) -> tuple[str, str]:
    """(id, source) of an object, for failure reports."""
    object_id = str(obj.get("id") or obj.get("uuid") or "")
    return object_id, str(obj.get("source") or object_id)


def _as_floats(vector: Any) -> list[float]:
    values = vector.tolist() if hasattr(vector, "tolist") else list(vector)
    values = [float(v) for v in values]
    if not values or not all(math.isfinite(v) for v in values):
        raise ValueError("its vector is empty or not finite")
    return values


def approx_bytes(obj: Mapping[str, Any]) -> int:
    """What an object weighs in a write request, counted without serialising it."""
    size = 64
    vectors = [obj.get("vector"), *(obj.get("vectors") or {}).values()]
    size += sum(8 * len(v) for v in vectors if v is not None)
    for value in (obj.get("properties") or {}).values():
        size += len(value) if isinstance(value, str | bytes) else 16
    return size


def to_data_object(obj: Mapping[str, Any], vector_name: str):
    """A dict as weaviate-client's DataObject; ValueError says what is wrong with it."""
    from weaviate.classes.data import DataObject

    if not obj.get("id") and not obj.get("uuid"):
        raise ValueError('it has neither an "id" nor a "uuid"')
    vectors = {name: _as_floats(v) for name, v in (obj.get("vectors") or {}).items()}
    if obj.get("vector") is not None:
        vectors[vector_name] = _as_floats(obj["vector"])
    properties = {
        name: base64.b64encode(value).decode("ascii") if isinstance(value, bytes) else value
        for name, value in (obj.get("properties") or {}).items()
    }
    return DataObject(
        properties=properties,
        uuid=str(obj.get("uuid") or object_uuid(str(obj["id"]))),
        vector=vectors or None,
    )


def ensure_collection(target: WeaviateTarget, vector_name: str) -> None:
    """Create the target collection (a named vector of our own, no vectorizer) and its
    tenant, unless they exist; several workers may race to do it."""
    from weaviate.classes.config import Configure

    client = target.connect()
    try:
        if not client.collections.exists(target.collection):
            try:
                client.collections.create(
                    target.collection,
                    vector_config=Configure.Vectors.self_provided(name=vector_name),
                    multi_tenancy_config=(
                        Configure.multi_tenancy(enabled=True) if target.tenant else None
                    ),
                )
            except Exception:
                if not client.collections.exists(target.collection):  # not a lost race
                    raise
        if target.tenant:
            ensure_tenant(client.collections.get(target.collection), target.tenant)
    finally:
        client.close()


class _WriteDoFn(CollectionDoFn):
    def __init__(
        self,
        target: WeaviateTarget,
        vector_name: str,
        batch_size: int,
        create_collection: bool,
        metrics_namespace: str,
    ) -> None:
        super().__init__(target)
        self.vector_name = vector_name
        self.batch_size = batch_size
        self.create_collection = create_collection
        self.written = Counter(metrics_namespace, "written")
        self.failed = Counter(metrics_namespace, "failed")

    def setup(self) -> None:
        if self.create_collection:
            ensure_collection(self.target, self.vector_name)
        super().setup()

    def start_bundle(self) -> None:
        self._buffer: list[tuple[Mapping[str, Any], Any]] = []
        self._buffer_bytes = 0

    def process(self, obj: Mapping[str, Any]):
        try:
            data_object = to_data_object(obj, self.vector_name)
        except (ValueError, TypeError) as err:
            yield self._failure(obj, f"not written: {first_line(err)}")
            return
        size = approx_bytes(obj)
        if size > MAX_OBJECT_BYTES:
            yield self._failure(
                obj,
                f"object is {size / 2**20:.0f} MiB, more than one write to Weaviate can carry "
                f"({MAX_OBJECT_BYTES / 2**20:.0f} MiB under its ~100 MB gRPC message limit); "
                "store its media by URI instead of its bytes (ib-ingest --store-uri)",
            )
            return
        if self._buffer and self._buffer_bytes + size > MAX_BATCH_BYTES:
            yield from self._flush()  # this object would push the batch past the cap
        self._buffer.append((obj, data_object))
        self._buffer_bytes += size
        if len(self._buffer) >= self.batch_size or self._buffer_bytes >= MAX_BATCH_BYTES:
            yield from self._flush()

    def finish_bundle(self):
        for output in self._flush():  # outside process(): outputs need an explicit window
            yield beam.pvalue.TaggedOutput(output.tag, GlobalWindows.windowed_value(output.value))

    def _failure(self, obj: Mapping[str, Any], reason: str) -> beam.pvalue.TaggedOutput:
        self.failed.inc()
        object_id, source = _label(obj)
        return beam.pvalue.TaggedOutput(FAILURES, Failure(object_id, source, "write", reason))

    def _flush(self):
        batch, self._buffer, self._buffer_bytes = self._buffer, [], 0
        for obj, error in self._insert(batch) if batch else []:
            yield self._failure(obj, error)

    def _insert(self, batch: list[tuple[Mapping[str, Any], Any]]) -> list[tuple[Any, str]]:
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
                errors = self._insert_once([data_object for _, data_object in pending])
            except Exception as err:
                reason = f"write failed after {BACKOFF.attempts} tries: {first_line(err)}"
                return [(obj, reason) for obj, _ in pending]
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
            pending = [item for item, _ in rejected]
        return [(obj, message) for (obj, _), message in rejected]

    def _insert_once(self, objects: list) -> dict[int, str]:
        """One ``insert_many`` (retried on other nodes if the call fails): rejections by index."""
        result = self.call(
            lambda collection: collection.data.insert_many(objects),
            what=f"writing {len(objects)} objects",
        )
        return {i: error.message for i, error in result.errors.items()}


class WriteToWeaviate(beam.PTransform):
    """PCollection of object dicts → Weaviate; returns the PCollection of :class:`Failure`.

    ``url`` may list a cluster's nodes, comma-separated (``grpc_port`` one port
    for all, or one per node); writes move to the next node when one fails.
    ``create_collection`` creates a missing collection with a named vector
    ``vector_name`` that holds the vectors given (no vectorizer), and a missing
    ``tenant``. Counts ``written`` and ``failed`` in ``metrics_namespace``.
    """

    def __init__(
        self,
        collection: str,
        *,
        url: str = "http://localhost:8080",
        grpc_port: int | str | None = None,
        api_key: str | None = None,
        vector_name: str = DEFAULT_VECTOR_NAME,
        batch_size: int = 64,
        consistency_level: str | None = None,
        tenant: str | None = None,
        create_collection: bool = False,
        metrics_namespace: str = DEFAULT_NAMESPACE,
    ) -> None:
        super().__init__()
        target = WeaviateTarget.of(
            collection,
            url,
            grpc_port,
            api_key=api_key,
            consistency_level=consistency_level,
            tenant=tenant,
        )
        self._init(target, vector_name, batch_size, create_collection, metrics_namespace)

    @classmethod
    def to_target(
        cls,
        target: WeaviateTarget,
        *,
        vector_name: str = DEFAULT_VECTOR_NAME,
        batch_size: int = 64,
        create_collection: bool = False,
        metrics_namespace: str = DEFAULT_NAMESPACE,
    ) -> WriteToWeaviate:
        """The writer for a :class:`WeaviateTarget` already made."""
        transform = cls.__new__(cls)
        beam.PTransform.__init__(transform)
        transform._init(target, vector_name, batch_size, create_collection, metrics_namespace)
        return transform

    def _init(
        self,
        target: WeaviateTarget,
        vector_name: str,
        batch_size: int,
        create_collection: bool,
        metrics_namespace: str,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, not {batch_size}")
        self.target = target
        self.vector_name = vector_name
        self.batch_size = batch_size
        self.create_collection = create_collection
        self.metrics_namespace = metrics_namespace

    def expand(self, objects):
        write = _WriteDoFn(
            self.target,
            self.vector_name,
            self.batch_size,
            self.create_collection,
            self.metrics_namespace,
        )
        results = objects | "Write" >> beam.ParDo(write).with_outputs(FAILURES, main="done")
        return results[FAILURES]


class WeaviateWriteConfig(VectorDatabaseWriteConfig):
    """Weaviate for Beam's RAG ingestion:
    ``VectorDatabaseWriteTransform(WeaviateWriteConfig(...))``.

    Each ``Chunk`` becomes one object: uuid5 of the chunk's id (a re-run
    replaces it), the dense embedding as the named vector ``vector_name``, the
    text content as the property ``text_property`` (None: not stored), the
    chunk's index as ``chunk_index``, and each metadata entry as a property of
    its own. A chunk without an embedding is written without a vector (a
    collection with a vectorizer module embeds it). The transform returns the
    PCollection of :class:`Failure`\\ s; the options are :class:`WriteToWeaviate`'s.
    """

    def __init__(
        self,
        collection: str,
        *,
        url: str = "http://localhost:8080",
        grpc_port: int | str | None = None,
        api_key: str | None = None,
        vector_name: str = DEFAULT_VECTOR_NAME,
        text_property: str | None = "content",
        batch_size: int = 64,
        consistency_level: str | None = None,
        tenant: str | None = None,
        create_collection: bool = True,
        metrics_namespace: str = DEFAULT_NAMESPACE,
    ) -> None:
        self.write = WriteToWeaviate(
            collection,
            url=url,
            grpc_port=grpc_port,
            api_key=api_key,
            vector_name=vector_name,
            batch_size=batch_size,
            consistency_level=consistency_level,
            tenant=tenant,
            create_collection=create_collection,
            metrics_namespace=metrics_namespace,
        )
        self.text_property = text_property

    def chunk_to_object(self, chunk: Chunk) -> dict[str, Any]:
        properties = dict(chunk.metadata)
        properties["chunk_index"] = chunk.index
        if self.text_property and chunk.content.text is not None:
            properties[self.text_property] = chunk.content.text
        return {"id": chunk.id, "properties": properties, "vector": chunk.dense_embedding}

    def create_write_transform(self) -> beam.PTransform:
        return _WriteChunks(self)


class _WriteChunks(beam.PTransform):
    def __init__(self, config: WeaviateWriteConfig) -> None:
        super().__init__()
        self.config = config

    def expand(self, chunks):
        return chunks | "AsObjects" >> beam.Map(self.config.chunk_to_object) | self.config.write
