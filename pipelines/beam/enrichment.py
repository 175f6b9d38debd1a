"""Enriching a pipeline's chunks with their nearest objects in Weaviate.

Beam's ``Enrichment`` transform joins each element with what an
``EnrichmentSourceHandler`` looks up for it; Beam ships handlers for Milvus,
BigQuery and others, but none for Weaviate. :class:`WeaviateSearchEnrichmentHandler`
is that handler, built like Beam's own ``MilvusSearchEnrichmentHandler`` so a
RAG pipeline can swap one for the other: it takes ``Chunk``\\ s (text, a
dense embedding, or both), searches a collection for each, and puts the hits
into ``chunk.metadata["enrichment_data"]`` as ``{"id": [...], "distance":
[...], "fields": [...]}``, nearest first.

With it a pipeline can, for instance, find for every new photo the objects of
a Media collection that look like it (near-vector, with the ImageBind vector
the pipeline computed) or, for a caption, the objects it describes
(near-text: Weaviate embeds the text with the collection's vectorizer, our
``multi2vec-bind`` server).

weaviate-client has no call that runs several searches at once, so a batch
of chunks is served by sending its searches concurrently over the one client
of the handler; see :data:`MAX_CONCURRENT_SEARCHES` for why that is safe.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import hashlib
import json
import logging
import math
import struct
import threading
import uuid
import warnings
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from apache_beam.ml.rag.types import Chunk

with warnings.catch_warnings():
    # google-api-core (imported by Beam's Enrichment) warns about Google's support dates
    # for this Python; nothing a pipeline can act on.
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"google\.")
    from apache_beam.transforms.enrichment import EnrichmentSourceHandler

from ib_vectorizer.retry import Backoff, call_with_retries

from ..connection import connect_first, node_unreachable
from ..schema import DEFAULT_VECTOR_NAME
from .target import WeaviateTarget

log = logging.getLogger(__name__)


# The searches of one batch run at most this many at a time, all over the handler's one
# client. weaviate-client (4.24) documents only its batch *import* as not thread-safe;
# searching is. A search on the sync WeaviateClient is one unary gRPC call
# (ConnectionSync.grpc_search → WeaviateStub.Search) on one grpc.Channel, which gRPC
# makes safe to share between threads, and builds its request and reply objects per call;
# the REST calls (schema, readiness) go through one httpx.Client, which httpx documents
# as shareable between threads (its connection pool takes a lock). So the threads share
# the client rather than each opening its own.
MAX_CONCURRENT_SEARCHES = 8

# A search that fails (a node that died, a reset connection, a 5xx) is asked again this
# often, on the next node of a cluster after each failure; a bad query is not asked again.
# weaviate-client itself already retries a gRPC UNAVAILABLE for up to about a minute
# before it gives up on a node, so on a cluster raise Enrichment's ``timeout`` (30 s by
# default) above that, or Beam times the batch out first.
SEARCH_BACKOFF = Backoff(attempts=5, base_s=0.5, max_s=8.0)
CONNECT_BACKOFF = Backoff(attempts=4, base_s=1.0, max_s=8.0)

InputT = Chunk | list[Chunk]
OutputT = list[tuple[Chunk, dict[str, Any]]]


def transient(err: Exception) -> bool:
    """Worth asking again: a server-side (5xx) or connection failure, not a bad query."""
    from weaviate.exceptions import UnexpectedStatusCodeError, WeaviateStartUpError

    if isinstance(err, UnexpectedStatusCodeError):
        return err.status_code >= 500
    return isinstance(err, WeaviateStartUpError) or node_unreachable(err)


def join_fn(left: Chunk, right: dict[str, Any]) -> Chunk:
    """The chunk with its search results as ``metadata["enrichment_data"]`` (as Milvus')."""
    left.metadata["enrichment_data"] = right
    return left


def plain(value: Any) -> Any:
    """A property value as plain Python: dates as ISO 8601 strings, uuids as strings,
    geo-coordinates and phone numbers as dicts, nested objects as dicts and lists."""
    if isinstance(value, datetime.date | datetime.time):
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if hasattr(value, "model_dump"):  # weaviate-client's pydantic values
        return plain(value.model_dump())
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return plain(dataclasses.asdict(value))
    return value


def _dense(chunk: Chunk) -> list[float] | None:
    embedding = chunk.dense_embedding
    if embedding is None or len(embedding) == 0:
        return None
    values = embedding.tolist() if hasattr(embedding, "tolist") else embedding
    return [float(v) for v in values]


def _text(chunk: Chunk) -> str | None:
    text = getattr(chunk.content, "text", None)
    return text or None


class WeaviateSearchEnrichmentHandler(EnrichmentSourceHandler[InputT, OutputT]):
    """Beam ``Enrichment`` handler: each ``Chunk`` → its nearest objects in a Weaviate
    collection, in ``chunk.metadata["enrichment_data"]``.

    Per chunk: a **near-vector** search with its dense embedding when it has one
    (on the named vector ``target_vector``, when the collection has named
    vectors), else a **near-text** search with its text (Weaviate embeds it with
    the collection's vectorizer). With ``hybrid_alpha`` (0: keyword only, 1:
    vector only) every chunk is a **hybrid** search of its text (BM25) and its
    embedding, or the text's vector when it has none. A chunk with neither text
    nor embedding is a ValueError naming it; Beam's Enrichment does not retry
    it, so the pipeline fails.

    The results per chunk: ``{"id": [uuid, ...], "distance": [...], "fields":
    [{property: value}, ...]}``, nearest first; for a hybrid search Weaviate
    gives no distance but a fused score (higher is better), so the key is
    ``"score"`` instead of ``"distance"``. ``fields`` hold the properties
    ``return_properties`` names (None: every property but the BLOBs), as plain
    Python values (dates as ISO 8601 strings).

    ``url`` may list several nodes of a cluster, comma-separated (``grpc_port``
    one port for all, or one per node): the handler connects to the first that
    answers and moves to the next when a search fails. ``filters`` is a
    weaviate-client ``Filter`` (``weaviate.classes.query.Filter``; they pickle,
    so they travel to the workers with the handler), applied to every search.
    ``distance`` is a maximum distance for the vector searches (for hybrid:
    the vector part's ``max_vector_distance``). ``tenant`` picks the tenant of
    a multi-tenant collection; ``consistency_level`` is ONE, QUORUM or ALL.
    ``min_batch_size``/``max_batch_size`` bound the batches Beam hands to one
    call; a batch's searches run concurrently (up to
    :data:`MAX_CONCURRENT_SEARCHES`) over one client.
    """

    def __init__(
        self,
        collection: str,
        *,
        url: str = "http://localhost:8080",
        grpc_port: int | str | None = None,
        api_key: str | None = None,
        limit: int = 10,
        target_vector: str | None = DEFAULT_VECTOR_NAME,
        hybrid_alpha: float | None = None,
        filters: Any = None,
        return_properties: Sequence[str] | None = None,
        distance: float | None = None,
        tenant: str | None = None,
        consistency_level: str | None = None,
        min_batch_size: int = 1,
        max_batch_size: int = 32,
    ) -> None:
        if not collection:
            raise ValueError("collection is empty")
        if limit < 1:
            raise ValueError(f"limit must be at least 1, not {limit}")
        if hybrid_alpha is not None and not 0.0 <= hybrid_alpha <= 1.0:
            raise ValueError(f"hybrid_alpha must be between 0 and 1, not {hybrid_alpha}")
        if distance is not None and (not math.isfinite(distance) or distance < 0):
            raise ValueError(f"distance must be a non-negative number, not {distance}")
        if not 1 <= min_batch_size <= max_batch_size:
            raise ValueError(
                f"batch sizes must satisfy 1 <= min_batch_size <= max_batch_size, "
                f"not {min_batch_size} and {max_batch_size}"
            )
        if isinstance(return_properties, str):
            raise TypeError("return_properties is a list of property names, not one string")
        self.target = WeaviateTarget.of(
            collection,
            url,
            grpc_port,
            api_key=api_key,
            consistency_level=consistency_level,
            tenant=tenant,
        )
        self.collection = collection
        self.nodes = self.target.nodes
        self.limit = limit
        self.target_vector = target_vector
        self.hybrid_alpha = hybrid_alpha
        self.filters = filters
        self.return_properties = None if return_properties is None else list(return_properties)
        self.distance = distance
        self._batching_kwargs = {"min_batch_size": min_batch_size, "max_batch_size": max_batch_size}
        self.join_fn = join_fn
        self.use_custom_types = True
        self._reset()

    # -- Beam's Caller protocol ------------------------------------------------------------

    def __enter__(self) -> WeaviateSearchEnrichmentHandler:
        """Connect (to the first node that answers) and read the collection's schema."""
        if self._client is not None:
            return self
        self._lock = threading.Lock()
        call_with_retries(
            lambda: self._connect(0),
            retryable=transient,
            backoff=CONNECT_BACKOFF,
            what=f"connecting to Weaviate for {self.collection}",
            log=log,
        )
        try:
            self._read_schema()
        except BaseException:
            self._close_clients()
            raise
        self._pool = ThreadPoolExecutor(
            max_workers=MAX_CONCURRENT_SEARCHES, thread_name_prefix="weaviate-search"
        )
        return self

    def __exit__(self, exc_type, exc_val, exc_tb) -> None:
        """Close the client (and any left behind by moving to another node)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
        self._close_clients()
        self._reset()

    def __call__(self, request: InputT, *args: Any, **kwargs: Any) -> OutputT:
        """``[(chunk, results), ...]`` for one chunk or a batch, in the batch's order."""
        chunks = request if isinstance(request, list) else [request]
        if not chunks:
            return []
        searches = [self._search_for(chunk) for chunk in chunks]  # bad chunks fail first
        if self._client is None:
            raise RuntimeError("the handler is not open: use it as a context manager")
        if len(searches) == 1:
            results = [self._run(searches[0], chunks[0])]
        else:
            results = list(self._pool.map(self._run, searches, chunks))
        return list(zip(chunks, results, strict=True))

    def batch_elements_kwargs(self) -> dict[str, int]:
        """The bounds of the batches ``BatchElements`` makes for one call."""
        return dict(self._batching_kwargs)

    def get_cache_key(self, request: InputT) -> str | list[str]:
        """A chunk's key in Enrichment's cache: the collection, the chunk's id, its text
        and a digest of its embedding (a list of keys for a batch)."""
        if isinstance(request, list):
            return [self._cache_key(chunk) for chunk in request]
        return self._cache_key(request)

    # -- pickling: the client, its lock and threads stay behind ------------------------------

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        for name in ("_client", "_collection", "_retired", "_lock", "_pool"):
            del state[name]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._reset()

    # -- searching ---------------------------------------------------------------------------

    def _search_for(self, chunk: Chunk) -> Callable[[Any], Any]:
        """The search for ``chunk`` as a function of the collection; ValueError if it has
        nothing to search with."""
        text, vector = _text(chunk), _dense(chunk)
        if text is None and vector is None:
            raise ValueError(
                f"chunk {chunk.id!r} has neither text nor a dense embedding to search with"
            )
        from weaviate.classes.query import MetadataQuery

        options: dict[str, Any] = {
            "limit": self.limit,
            "filters": self.filters,
            "return_properties": self._properties,
        }
        if self._target_vector is not None:
            options["target_vector"] = self._target_vector
        if self.hybrid_alpha is not None:
            return lambda collection: collection.query.hybrid(
                query=text,
                vector=vector,
                alpha=self.hybrid_alpha,
                max_vector_distance=self.distance,
                return_metadata=MetadataQuery(score=True),
                **options,
            )
        options["distance"] = self.distance
        options["return_metadata"] = MetadataQuery(distance=True)
        if vector is not None:
            return lambda collection: collection.query.near_vector(near_vector=vector, **options)
        return lambda collection: collection.query.near_text(query=text, **options)

    def _run(self, search: Callable[[Any], Any], chunk: Chunk) -> dict[str, Any]:
        """Run ``search`` with retries; after a failure, on the next node of a cluster."""
        stale: int | None = None  # the client generation that failed

        def attempt():
            nonlocal stale
            if stale is not None:
                self._move_on(stale)
                stale = None
            collection, generation = self._current()
            try:
                return search(collection)
            except Exception as err:
                if len(self.nodes) > 1 and transient(err):
                    stale = generation
                raise

        response = call_with_retries(
            attempt,
            retryable=transient,
            backoff=SEARCH_BACKOFF,
            what=f"searching {self.collection} for chunk {chunk.id}",
            log=log,
        )
        hits = response.objects
        measure = "score" if self.hybrid_alpha is not None else "distance"
        return {
            "id": [str(hit.uuid) for hit in hits],
            measure: [getattr(hit.metadata, measure) for hit in hits],
            "fields": [plain(dict(hit.properties)) for hit in hits],
        }

    # -- the client --------------------------------------------------------------------------

    def _reset(self) -> None:
        self._client = None
        self._collection = None
        self._retired: list[Any] = []
        self._lock: threading.Lock | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._node = 0
        self._generation = 0
        self._properties: list[str] | None = self.return_properties
        self._target_vector: str | None = None

    def _connect(self, start: int) -> None:
        client, node = connect_first(self.nodes, self.target.api_key, start % len(self.nodes))
        collection = self.target.collection_of(client)
        if self._client is not None:
            self._retired.append(self._client)  # other threads may still be using it
        self._client, self._collection, self._node = client, collection, node
        self._generation += 1
        if len(self.nodes) > 1:
            log.info("searching weaviate at %s", self.nodes[node][0])

    def _current(self) -> tuple[Any, int]:
        with self._lock:
            return self._collection, self._generation

    def _move_on(self, generation: int) -> None:
        """Connect to the next node, unless another thread already has since ``generation``."""
        with self._lock:
            if generation == self._generation:
                log.warning(
                    "weaviate at %s failed; moving to the next node", self.nodes[self._node][0]
                )
                self._connect(self._node + 1)

    def _read_schema(self) -> None:
        """Which properties to return and whether searches name the vector."""
        from ..near import NoSuchCollection, open_collection, text_properties

        try:
            collection = open_collection(self._client, self.collection)
        except NoSuchCollection as err:
            raise ValueError(str(err)) from None
        config = collection.config.get()
        named = sorted(config.vector_config or {})
        if self.target_vector is not None and named:
            if self.target_vector not in named:
                raise ValueError(
                    f"collection {self.collection!r} has no vector named "
                    f"{self.target_vector!r} (it has {', '.join(named)})"
                )
            self._target_vector = self.target_vector
        if self.return_properties is None:
            self._properties = text_properties(collection)

    def _close_clients(self) -> None:
        for client in [*self._retired, self._client]:
            if client is not None:
                with contextlib.suppress(Exception):  # a dead node's client may fail to close
                    client.close()
        self._client, self._retired = None, []

    def _cache_key(self, chunk: Chunk) -> str:
        vector = _dense(chunk)
        digest = (
            hashlib.sha256(struct.pack(f"<{len(vector)}d", *vector)).hexdigest()
            if vector is not None
            else None
        )
        return "weaviate-search: " + json.dumps(
            [self.collection, chunk.id, _text(chunk), digest], separators=(",", ":")
        )

    def __str__(self) -> str:  # Beam names the transform's metrics namespace with it
        return f"WeaviateSearchEnrichmentHandler({self.collection})"


__all__ = ["WeaviateSearchEnrichmentHandler", "join_fn"]
