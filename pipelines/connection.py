"""Connecting weaviate-client v4 to a Weaviate given by its HTTP URL and gRPC port."""

from __future__ import annotations

from urllib.parse import urlparse


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
