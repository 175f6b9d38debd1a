"""ImageBind and Weaviate as pieces of your own Apache Beam pipeline.

- :class:`ImageBindModelHandler`: ``RunInference`` over media bytes, paths/URIs
  and text of one modality → unit vectors.
- :class:`ImageBindEmbeddings`: the same model in Beam's RAG and ``MLTransform``
  embedding interfaces (``Chunk.embedding``, or dict columns).
- :class:`WeaviateWriteConfig`: Weaviate for Beam's ``VectorDatabaseWriteTransform``.
- :class:`WriteToWeaviate` / :class:`ReadFromWeaviate`: plain PTransforms over dicts.
- :class:`WeaviateSearchEnrichmentHandler`: vector, text and hybrid search in
  Beam's ``Enrichment`` transform.

Writers return the PCollection of :class:`Failure`\\ s (one per object not
written, with the reason); ``ib-ingest`` is built from these pieces. See
docs/beam-plugin.md for runnable examples.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .embeddings import ImageBindEmbeddings
    from .enrichment import WeaviateSearchEnrichmentHandler
    from .failures import Failure, write_failures
    from .inference import DecodedItem, ImageBindModelHandler, UnusableItem
    from .read import ReadFromWeaviate
    from .write import WeaviateWriteConfig, WriteToWeaviate, object_uuid

# Each name is imported from its module on first use, so a job that needs only the
# writer does not import the model, or Beam's Enrichment (and google-api-core).
_MODULE_OF = {
    "DecodedItem": "inference",
    "Failure": "failures",
    "ImageBindEmbeddings": "embeddings",
    "ImageBindModelHandler": "inference",
    "ReadFromWeaviate": "read",
    "UnusableItem": "inference",
    "WeaviateSearchEnrichmentHandler": "enrichment",
    "WeaviateWriteConfig": "write",
    "WriteToWeaviate": "write",
    "object_uuid": "write",
    "write_failures": "failures",
}

__all__ = [
    "DecodedItem",
    "Failure",
    "ImageBindEmbeddings",
    "ImageBindModelHandler",
    "ReadFromWeaviate",
    "UnusableItem",
    "WeaviateSearchEnrichmentHandler",
    "WeaviateWriteConfig",
    "WriteToWeaviate",
    "object_uuid",
    "write_failures",
]


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{module}", __name__), name)


def __dir__() -> list[str]:
    return sorted(__all__)
