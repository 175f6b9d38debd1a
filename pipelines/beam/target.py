"""Which Weaviate collection a step works on, and a DoFn base that keeps a client to it.

A target names the nodes of one Weaviate (a single node, or several nodes
of a cluster, tried in turn), the collection, the consistency level and,
for a multi-tenant collection, the tenant. It is a small frozen value, so
it pickles into every step that needs it; each DoFn instance opens its own
client in ``setup`` and closes it in ``teardown``.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import apache_beam as beam

from ib_vectorizer.retry import Backoff, call_with_retries

from ..connection import CONSISTENCY_LEVELS, Node, connect_first, parse_nodes, with_consistency

log = logging.getLogger(__name__)

DEFAULT_GRPC_PORT = 50051
# A failed call is tried again this often, on the next node each time.
BACKOFF = Backoff(attempts=5, base_s=1.0, max_s=30.0)

T = TypeVar("T")


@dataclass(frozen=True)
class WeaviateTarget:
    """Where to read and write: Weaviate's HTTP URL and gRPC port (more nodes of a
    cluster after them), the collection, the consistency level and the tenant."""

    url: str
    grpc_port: int
    collection: str
    api_key: str | None = None
    other_nodes: tuple[Node, ...] = ()
    consistency_level: str | None = None  # ONE, QUORUM, ALL; None: Weaviate's (QUORUM)
    tenant: str | None = None  # for a multi-tenant collection

    @classmethod
    def of(
        cls,
        collection: str,
        url: str,
        grpc_port: int | str | None = None,
        *,
        api_key: str | None = None,
        consistency_level: str | None = None,
        tenant: str | None = None,
    ) -> WeaviateTarget:
        """A target from user-facing arguments: ``url`` may list a cluster's nodes,
        comma-separated, and ``grpc_port`` give one port for all or one per node."""
        if consistency_level is not None and consistency_level not in CONSISTENCY_LEVELS:
            raise ValueError(
                f"consistency_level {consistency_level!r}: expected one of {CONSISTENCY_LEVELS}"
            )
        ports = DEFAULT_GRPC_PORT if grpc_port is None else grpc_port
        (first, port), *others = parse_nodes(url, ports)
        return cls(first, port, collection, api_key, tuple(others), consistency_level, tenant)

    @property
    def nodes(self) -> list[Node]:
        return [(self.url, self.grpc_port), *self.other_nodes]

    def connect(self, start: int = 0):
        """A client for the first node that answers, from node ``start`` on."""
        return connect_first(self.nodes, self.api_key, start)[0]

    def collection_of(self, client):
        """The collection on ``client``, at the target's consistency level and tenant."""
        collection = client.collections.get(self.collection)
        collection = with_consistency(collection, self.consistency_level)
        return collection.with_tenant(self.tenant) if self.tenant else collection


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

    def call(self, operation: Callable[[Any], T], what: str) -> T:
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
            log.info("using weaviate %s", nodes[self._node][0])

    def _close(self) -> None:
        client, self._client = getattr(self, "_client", None), None
        if client is not None:
            with contextlib.suppress(Exception):  # a dead node's client may fail to close
                client.close()
