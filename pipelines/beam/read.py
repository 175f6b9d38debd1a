"""Reading a Weaviate collection back into a pipeline, with Weaviate's cursor.

Each tenant (or the whole collection, if it has none) is read by one worker,
page after page in uuid order with Weaviate's cursor API, so a read neither
skips nor repeats objects while nothing is written; the objects are then
spread over the workers (a reshuffle) for the steps that follow.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import apache_beam as beam

from .counters import DEFAULT_NAMESPACE, Counter
from .target import WeaviateTarget


class _ReadCollection(beam.DoFn):
    def __init__(
        self,
        properties: Sequence[str] | None,
        include_vector: bool | Sequence[str],
        page_size: int,
        metrics_namespace: str,
    ) -> None:
        self.properties = properties
        self.include_vector = include_vector
        self.page_size = page_size
        self.read = Counter(metrics_namespace, "read")

    def process(self, target: WeaviateTarget):
        from weaviate.classes.config import DataType

        client = target.connect()
        try:
            collection = target.collection_of(client)
            schema = {p.name: p.data_type for p in collection.config.get().properties}
            if self.properties is None:  # every property but the (heavy) BLOBs
                shown = [name for name, kind in schema.items() if kind != DataType.BLOB]
            else:  # a property the collection lacks is absent, as on an object without it
                shown = [name for name in self.properties if name in schema]
            vectors = self.include_vector
            include = list(vectors) if isinstance(vectors, list | tuple) else bool(vectors)
            for obj in collection.iterator(
                include_vector=include,
                return_properties=shown,
                cache_size=self.page_size,
            ):
                record: dict[str, Any] = {"uuid": str(obj.uuid), "properties": dict(obj.properties)}
                if include:
                    record["vector"] = {k: list(v) for k, v in (obj.vector or {}).items()}
                if target.tenant:
                    record["tenant"] = target.tenant
                self.read.inc()
                yield record
        finally:
            client.close()


class ReadFromWeaviate(beam.PTransform):
    """A collection (or some of its tenants) → one dict per object:
    ``{"uuid", "properties"[, "vector"][, "tenant"]}``.

    ``properties``: the ones to read (None: every non-BLOB property).
    ``include_vector``: True for every named vector, or a list of names; each
    dict's ``vector`` maps names to lists of floats. ``tenant``: one tenant's
    name, several, or None for a collection without multi-tenancy. Counts
    ``read`` in ``metrics_namespace``.
    """

    def __init__(
        self,
        collection: str,
        *,
        url: str = "http://localhost:8080",
        grpc_port: int | str | None = None,
        api_key: str | None = None,
        properties: Sequence[str] | None = None,
        include_vector: bool | Sequence[str] = False,
        tenant: str | Sequence[str] | None = None,
        consistency_level: str | None = None,
        page_size: int = 1000,
        metrics_namespace: str = DEFAULT_NAMESPACE,
    ) -> None:
        super().__init__()
        if page_size < 1:
            raise ValueError(f"page_size must be at least 1, not {page_size}")
        tenants = [tenant] if tenant is None or isinstance(tenant, str) else list(tenant)
        self.targets = [
            WeaviateTarget.of(
                collection,
                url,
                grpc_port,
                api_key=api_key,
                consistency_level=consistency_level,
                tenant=name,
            )
            for name in tenants
        ]
        self.properties = None if properties is None else list(properties)
        self.include_vector = (
            include_vector if isinstance(include_vector, bool) else list(include_vector)
        )
        self.page_size = page_size
        self.metrics_namespace = metrics_namespace

    @classmethod
    def from_target(cls, target: WeaviateTarget, **options: Any) -> ReadFromWeaviate:
        """The reader of a :class:`WeaviateTarget` already made (its nodes, key, tenant)."""
        reader = cls(target.collection, url=target.url, **options)
        reader.targets = [target]
        return reader

    def expand(self, pipeline):
        read = _ReadCollection(
            self.properties, self.include_vector, self.page_size, self.metrics_namespace
        )
        return (
            pipeline
            | "Targets" >> beam.Create(self.targets)
            | "OnePerWorker" >> beam.Reshuffle()
            | "Cursor" >> beam.ParDo(read)
            | "Spread" >> beam.Reshuffle()
        )
