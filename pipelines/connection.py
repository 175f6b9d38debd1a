"""Connecting weaviate-client v4 to Weaviate: one node, or the first of several that answers."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from urllib.parse import urlparse

from ib_vectorizer.retry import first_line

log = logging.getLogger(__name__)

CONSISTENCY_LEVELS = ("ONE", "QUORUM", "ALL")

Node = tuple[str, int]  # (HTTP URL, gRPC port)


def connect_weaviate(url: str, grpc_port: int = 50051, api_key: str | None = None):
    """A client for ``url`` (http or https; gRPC on the same host, TLS alike)."""
    import weaviate
    from weaviate.classes.init import Auth

    parsed = urlparse(url)
    if not parsed.hostname:
        raise ValueError(f"not a URL: {url}")
    secure = parsed.scheme == "https"
    return weaviate.connect_to_custom(
        http_host=parsed.hostname,
        http_port=parsed.port or (443 if secure else 80),
        http_secure=secure,
        grpc_host=parsed.hostname,
        grpc_port=grpc_port,
        grpc_secure=secure,
        auth_credentials=Auth.api_key(api_key) if api_key else None,
    )


def connect_first(nodes: Sequence[Node], api_key: str | None = None, start: int = 0):
    """(client, index) for the first of ``nodes`` that answers, trying them in turn from ``start``.

    Raises the last node's error when none answers.
    """
    if not nodes:
        raise ValueError("no Weaviate node to connect to")
    error: Exception | None = None
    for step in range(len(nodes)):
        index = (start + step) % len(nodes)
        url, grpc_port = nodes[index]
        try:
            return connect_weaviate(url, grpc_port, api_key), index
        except Exception as err:  # refused, timed out, not ready: try the next node
            if step + 1 < len(nodes):
                log.warning(
                    "weaviate at %s does not answer (%s); trying the next", url, first_line(err)
                )
            error = err
    raise error


def parse_nodes(urls: str, grpc_ports: str | int) -> list[Node]:
    """``--weaviate-url A,B,C`` and ``--grpc-port P`` (all alike) or ``P1,P2,P3`` → nodes."""
    url_list = [u.strip() for u in str(urls).split(",") if u.strip()]
    port_list = [p.strip() for p in str(grpc_ports).split(",") if p.strip()]
    if not url_list:
        raise ValueError("--weaviate-url is empty")
    for url in url_list:
        if not urlparse(url).hostname:
            raise ValueError(f"--weaviate-url: {url!r} is not a URL")
    if len(port_list) == 1:
        port_list *= len(url_list)
    if len(port_list) != len(url_list):
        raise ValueError(
            f"--grpc-port gives {len(port_list)} ports for {len(url_list)} Weaviate URLs: "
            "give one port for all, or one per URL in the same order"
        )
    try:
        ports = [int(p) for p in port_list]
    except ValueError:
        raise ValueError(f"--grpc-port: {grpc_ports!r} is not a port or a list of ports") from None
    return list(zip(url_list, ports, strict=True))


def with_consistency(collection, level: str | None):
    """``collection`` reading and writing at ``level`` (ONE, QUORUM, ALL); None: Weaviate's."""
    if level is None:
        return collection
    from weaviate.classes.config import ConsistencyLevel

    return collection.with_consistency_level(ConsistencyLevel[level])


def node_unreachable(err: BaseException) -> bool:
    """Whether ``err`` says the Weaviate node is gone (refused, timed out, unavailable),
    rather than that the request was wrong: the cue to ask again or elsewhere."""
    from weaviate.exceptions import (
        WeaviateConnectionError,
        WeaviateQueryError,
        WeaviateTimeoutError,
    )

    if isinstance(err, WeaviateConnectionError | WeaviateTimeoutError):
        return True
    if not isinstance(err, WeaviateQueryError):
        return False
    message = str(err).lower()
    return "unavailable" in message or "connect" in message
