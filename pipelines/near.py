"""Near-text, near-media and near-object queries: what ``ib-query`` and ``ib-search`` share."""

from __future__ import annotations

import base64

from ib_vectorizer.modalities import Modality

# Query kinds by the names users give them: image, audio, ..., imu, then text.
# A media label is also its NearMediaType member.
NEAR_KINDS = [m.label for m in Modality if m is not Modality.TEXT] + ["text"]


class NoSuchCollection(LookupError):
    """The collection a query names is not in Weaviate."""

    def __init__(self, name: str) -> None:
        super().__init__(f"collection {name!r} does not exist")


def open_collection(client, name: str, consistency_level: str | None = None):
    """The collection ``name``, read at ``consistency_level``; NoSuchCollection if it is missing."""
    from .connection import with_consistency

    if not client.collections.exists(name):
        raise NoSuchCollection(name)
    return with_consistency(client.collections.get(name), consistency_level)


def text_properties(collection) -> list[str]:
    """Every property but the BLOBs: what a hit shows (media bytes are fetched on their own)."""
    from weaviate.classes.config import DataType

    return [p.name for p in collection.config.get().properties if p.data_type != DataType.BLOB]


def near(
    collection,
    kind: str,
    value: str | bytes,
    *,
    limit: int,
    offset: int = 0,
    filters=None,
    return_properties: list[str] | None = None,
) -> list[dict]:
    """Hits ``{id, distance, properties}``, nearest first.

    ``kind`` is ``text`` (``value`` the text), a media label from NEAR_KINDS
    (``value`` the file's bytes; Weaviate has our server embed them) or
    ``object`` (``value`` an object's uuid: "more like this").
    """
    from weaviate.classes.query import MetadataQuery, NearMediaType

    options = {
        "limit": limit,
        "offset": offset or None,
        "filters": filters,
        "return_metadata": MetadataQuery(distance=True),
        "return_properties": (
            text_properties(collection) if return_properties is None else return_properties
        ),
    }
    if kind == "text":
        result = collection.query.near_text(query=value, **options)
    elif kind == "object":
        result = collection.query.near_object(near_object=value, **options)
    elif kind in NEAR_KINDS:
        result = collection.query.near_media(
            media=base64.b64encode(value).decode(),
            media_type=getattr(NearMediaType, kind.upper()),
            **options,
        )
    else:
        raise ValueError(f"unknown query kind {kind!r}: expected object or one of {NEAR_KINDS}")
    return [
        {"id": str(o.uuid), "distance": o.metadata.distance, "properties": dict(o.properties)}
        for o in result.objects
    ]
