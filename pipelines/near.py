"""Near-text, near-media, near-object and composed queries: what ``ib-query`` and
``ib-search`` share."""

from __future__ import annotations

import base64
from collections.abc import Sequence

import numpy as np

from ib_vectorizer.modalities import Modality

# Query kinds by the names users give them: image, audio, ..., imu, then text.
# A media label is also its NearMediaType member.
NEAR_KINDS = [m.label for m in Modality if m is not Modality.TEXT] + ["text"]


class NoSuchCollection(LookupError):
    """The collection a query names is not in Weaviate."""

    def __init__(self, name: str) -> None:
        super().__init__(f"collection {name!r} does not exist")


def collection_names(client) -> str:
    """The collections there are, for a message about one that is not: ``A, B`` or ``none``."""
    return ", ".join(sorted(client.collections.list_all(simple=True))) or "none"


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


def _search_options(
    collection, limit: int, offset: int, filters, return_properties, target_vector
) -> dict:
    """What every search of a collection is given: the page, filters, properties, vector."""
    return {
        "limit": limit,
        "offset": offset or None,
        "filters": filters,
        "return_properties": (
            text_properties(collection) if return_properties is None else return_properties
        ),
        "target_vector": target_vector or imagebind_vector(collection),
    }


def near(
    collection,
    kind: str,
    value: str | bytes,
    *,
    limit: int,
    offset: int = 0,
    filters=None,
    return_properties: list[str] | None = None,
    target_vector: str | None = None,
) -> list[dict]:
    """Hits ``{id, distance, properties}``, nearest first.

    ``kind`` is ``text`` (``value`` the text), a media label from NEAR_KINDS
    (``value`` the file's bytes; Weaviate has our server embed them),
    ``object`` (``value`` an object's uuid: "more like this") or ``vector``
    (``value`` a vector). ``target_vector`` names the vector searched (default:
    the collection's ImageBind vector).
    """
    from weaviate.classes.query import MetadataQuery, NearMediaType

    options = _search_options(
        collection, limit, offset, filters, return_properties, target_vector
    ) | {"return_metadata": MetadataQuery(distance=True)}
    if kind == "text":
        result = collection.query.near_text(query=value, **options)
    elif kind == "object":
        result = collection.query.near_object(near_object=value, **options)
    elif kind == "vector":
        vector = [float(v) for v in value]
        result = collection.query.near_vector(near_vector=vector, **options)
    elif kind in NEAR_KINDS:
        result = collection.query.near_media(
            media=base64.b64encode(value).decode(),
            media_type=getattr(NearMediaType, kind.upper()),
            **options,
        )
    else:
        raise ValueError(
            f"unknown query kind {kind!r}: expected object, vector or one of {NEAR_KINDS}"
        )
    return [
        {"id": str(o.uuid), "distance": o.metadata.distance, "properties": dict(o.properties)}
        for o in result.objects
    ]


def hybrid(
    collection,
    text: str,
    alpha: float,
    *,
    limit: int,
    offset: int = 0,
    filters=None,
    return_properties: list[str] | None = None,
    target_vector: str | None = None,
) -> list[dict]:
    """Hits ``{id, score, properties}`` of Weaviate's hybrid search, best first: BM25 over
    the text properties fused with the vector search of ``text`` (``alpha`` 1: vector only,
    0: keywords only)."""
    from weaviate.classes.query import MetadataQuery

    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"the hybrid alpha is between 0 (keywords) and 1 (vector), not {alpha}")
    options = _search_options(collection, limit, offset, filters, return_properties, target_vector)
    result = collection.query.hybrid(
        query=text, alpha=alpha, return_metadata=MetadataQuery(score=True), **options
    )
    return [
        {"id": str(o.uuid), "score": o.metadata.score, "properties": dict(o.properties)}
        for o in result.objects
    ]


def imagebind_vector(collection) -> str | None:
    """The name of the collection's ImageBind vector, or None for an unnamed one."""
    from .schema import DEFAULT_VECTOR_NAME

    named = collection.config.get().vector_config or {}
    if not named:
        return None
    return DEFAULT_VECTOR_NAME if DEFAULT_VECTOR_NAME in named else sorted(named)[0]


def compose(vectors: Sequence[np.ndarray], weights: Sequence[float] | None = None) -> np.ndarray:
    """The query vector of a composed query: the weighted sum of the items' unit vectors,
    made a unit vector (a negative weight subtracts an item). ValueError when the
    weights are wrong or the sum is (nearly) zero."""
    if not vectors:
        raise ValueError("a composed query needs at least one item")
    weights = [1.0] * len(vectors) if weights is None else [float(w) for w in weights]
    if len(weights) != len(vectors):
        raise ValueError(f"{len(weights)} weights for {len(vectors)} query items: give one each")
    units = [np.asarray(v, dtype=np.float64) / np.linalg.norm(v) for v in vectors]
    total = sum(w * u for w, u in zip(weights, units, strict=True))
    norm = float(np.linalg.norm(total))
    if not np.isfinite(norm) or norm < 1e-6:
        raise ValueError("the weighted items cancel out: the composed query has no direction")
    return (total / norm).astype(np.float32)


def near_composed(
    collection,
    items: Sequence[tuple[str, str | bytes]],
    *,
    vectorizer_url: str,
    weights: Sequence[float] | None = None,
    limit: int,
    offset: int = 0,
    filters=None,
    return_properties: list[str] | None = None,
    target_vector: str | None = None,
) -> list[dict]:
    """Hits for several query items at once: ``items`` are ``(kind, value)`` as for
    :func:`near` (``text`` with a str, a media label with the file's bytes), embedded
    by our inference server at ``vectorizer_url`` and composed (:func:`compose`)."""
    return near(
        collection,
        "vector",
        composed_vector(items, vectorizer_url=vectorizer_url, weights=weights),
        limit=limit,
        offset=offset,
        filters=filters,
        return_properties=return_properties,
        target_vector=target_vector,
    )


def composed_vector(
    items: Sequence[tuple[str, str | bytes]],
    *,
    vectorizer_url: str,
    weights: Sequence[float] | None = None,
) -> np.ndarray:
    """The query vector of :func:`near_composed`'s ``items``, on its own so a caller that
    searches several pages of one query (the search page) embeds its items once.
    ValueError names the item our inference server could not embed."""
    from .vectorizer import VectorizerError, vectorize_one

    vectors = []
    for number, (kind, value) in enumerate(items, start=1):
        if kind not in NEAR_KINDS:
            raise ValueError(f"unknown query item {kind!r}: expected one of {NEAR_KINDS}")
        try:
            vectors.append(vectorize_one(vectorizer_url, Modality.parse(kind), value))
        except VectorizerError as err:
            raise ValueError(f"query item {number} ({kind}): {err}") from None
    return compose(vectors, weights)


def where_filter(collection, conditions: Sequence[str]):
    """``PROP=VALUE`` conditions (all must hold) as a Weaviate filter; None for none.

    The value is read as the property's type; on an array property (``labels``)
    the condition holds when any element equals the value. ValueError names an
    unknown property or a value of the wrong type.
    """
    from weaviate.classes.config import DataType
    from weaviate.classes.query import Filter

    if not conditions:
        return None
    types = {p.name: p.data_type for p in collection.config.get().properties}
    parsers = {
        DataType.INT: int, DataType.INT_ARRAY: int,
        DataType.NUMBER: float, DataType.NUMBER_ARRAY: float,
        DataType.BOOL: lambda v: {"true": True, "false": False}[v.lower()],
    }  # fmt: skip
    arrays = {DataType.TEXT_ARRAY, DataType.INT_ARRAY, DataType.NUMBER_ARRAY}
    filters = []
    for condition in conditions:
        name, equals, raw = condition.partition("=")
        name = name.strip()
        if not equals or not name:
            raise ValueError(f"--where {condition!r}: expected PROPERTY=VALUE")
        if name not in types:
            raise ValueError(
                f"--where {condition!r}: the collection has no property {name!r} "
                f"(it has {', '.join(sorted(types))})"
            )
        try:
            value = parsers.get(types[name], str)(raw)
        except (ValueError, KeyError):
            raise ValueError(
                f"--where {condition!r}: {raw!r} is not a {types[name].value}"
            ) from None
        prop = Filter.by_property(name)
        filters.append(prop.contains_any([value]) if types[name] in arrays else prop.equal(value))
    return filters[0] if len(filters) == 1 else Filter.all_of(filters)
