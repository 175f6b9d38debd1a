"""Collections vectorized by ``multi2vec-bind``: one call to create, one rule to combine.

A collection is described by its media fields (which property holds which
modality, with an optional weight) and any metadata properties. Media are
stored as BLOB properties (base64), text as TEXT.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np

from ib_vectorizer.modalities import Modality

# Weaviate concatenates an object's vectors in this modality order.
WEAVIATE_MODALITY_ORDER = (
    Modality.TEXT,
    Modality.VISION,
    Modality.AUDIO,
    Modality.VIDEO,
    Modality.IMU,
    Modality.THERMAL,
    Modality.DEPTH,
)
# The ``Configure.Vectors.multi2vec_bind`` keyword for each modality.
CONFIG_KEYWORD = {
    Modality.TEXT: "text_fields",
    Modality.VISION: "image_fields",
    Modality.AUDIO: "audio_fields",
    Modality.VIDEO: "video_fields",
    Modality.IMU: "imu_fields",
    Modality.THERMAL: "thermal_fields",
    Modality.DEPTH: "depth_fields",
}
SOURCE_ID = "source_id"  # where pipelines keep the id an object was made from
PARENT_ID = "parent_id"  # a segment's source (see pipelines.ingest.segments)
CONTENT_HASH = "content_hash"  # what an object was made from and by (see ingest.incremental)
MODALITY = "modality"  # the modalities of an object's fields (image, audio, ...), filterable
LABELS = "labels"  # zero-shot tags, best first (see pipelines.labels), filterable
LABEL_SCORES = "label_scores"  # their probabilities, in the same order
# A segment of a long recording (see pipelines.ingest.segments): where it lies in its source.
SEGMENT_START = "segment_start_s"
SEGMENT_END = "segment_end_s"
SEGMENT_INDEX = "segment_index"
SEGMENT_COUNT = "segment_count"  # on the last segment only; 0 on the others
EXACT_TEXT = (SOURCE_ID, PARENT_ID, MODALITY, LABELS)  # matched whole, never split into words
DEFAULT_VECTOR_NAME = "imagebind"
# The line of a collection's description that lists where its stored URIs were read from.
MEDIA_ROOTS_LINE = "ib-ingest media roots: "


@dataclass(frozen=True)
class MediaField:
    """Property ``name`` holds ``modality``; ``weight`` is its share in the object's vector."""

    name: str
    modality: Modality
    weight: float | None = None

    @property
    def data_type(self):
        from weaviate.classes.config import DataType

        return DataType.TEXT if self.modality is Modality.TEXT else DataType.BLOB


def uri_property(field: str) -> str:
    """The property that holds the source URI of media field ``field`` (``--store-uri``)."""
    return f"{field}_uri"


def bind_vector_config(fields: Sequence[MediaField], name: str = DEFAULT_VECTOR_NAME):
    """The named-vector config for ``fields``.

    Within a modality Weaviate pairs vectors (sorted by property name) with
    weights (in config order), so fields are listed sorted by name: then the
    two orders agree and every weight lands on its own field.
    """
    from weaviate.classes.config import Configure, Multi2VecField

    weighted = any(f.weight is not None for f in fields)
    if weighted and any(f.weight is None for f in fields):
        raise ValueError("give every media field a weight, or none")
    options: dict[str, list] = {}
    for field in sorted(fields, key=lambda f: f.name):
        entry = Multi2VecField(name=field.name, weight=field.weight) if weighted else field.name
        options.setdefault(CONFIG_KEYWORD[field.modality], []).append(entry)
    return Configure.Vectors.multi2vec_bind(name=name, **options)


def _weaviate_module_config(vector_config) -> dict:
    """The named-vector config as Weaviate reads it.

    weaviate-client (4.23) writes the IMU keys as ``IMUFields``, but Weaviate's
    ``multi2vec-bind`` reads ``imuFields``, so an IMU property would silently
    never be vectorized. We send the corrected keys.
    """
    config = vector_config._to_dict()
    module = config["vectorizer"]["multi2vec-bind"]
    for section in (module, module.get("weights", {})):
        if "IMUFields" in section:
            section["imuFields"] = section.pop("IMUFields")
    return config


def field_vector_configs(
    fields: Sequence[MediaField], vector_name: str = DEFAULT_VECTOR_NAME
) -> dict[str, dict]:
    """A named vector per media field, named after it and vectorized from it alone.

    Each is ``multi2vec-bind`` on one field, so Weaviate embeds it itself when
    no vector is given, and vectorizes a near_text/near_image query on it. Its
    value is the field's own embedding (the combination of one vector is that
    vector). A field named like the combined vector ``vector_name`` is refused:
    the two would share one name.
    """
    clash = [f.name for f in fields if f.name == vector_name]
    if clash:
        raise ValueError(
            f"media field {clash[0]!r} cannot have a vector of its own: the combined vector "
            f"is named {vector_name!r} too; rename the field"
        )
    return {
        f.name: _weaviate_module_config(bind_vector_config([replace(f, weight=None)], f.name))
        for f in sorted(fields, key=lambda f: f.name)
    }


def _add_vectors(collection, configs: Mapping[str, dict]) -> None:
    """Add named vectors (``configs``, as Weaviate reads them) to an existing collection.

    weaviate-client's ``config.add_vector`` sends each config's ``_to_dict()``,
    which would spell the IMU keys its own way; this sends ours instead.
    """
    from weaviate.collections.classes.config_vectors import VectorConfigCreate

    class AsWeaviateReads(VectorConfigCreate):
        corrected: dict

        def _to_dict(self, **_: object) -> dict:
            return self.corrected

    collection.config.add_vector(
        vector_config=[
            AsWeaviateReads.model_construct(name=name, corrected=config)
            for name, config in configs.items()
        ]
    )


def create_bind_collection(
    client,
    name: str,
    fields: Sequence[MediaField],
    metadata: Mapping[str, object] | None = None,
    vector_name: str = DEFAULT_VECTOR_NAME,
    replication_factor: int | None = None,
    multi_tenancy: bool = False,
    field_vectors: bool = False,
):
    """Create (or return, if it exists) a collection vectorized by our server via Weaviate.

    ``metadata`` maps extra property names to ``weaviate.classes.config.DataType``;
    a ``source_id`` TEXT property is always added so objects can be found from
    their source. ``replication_factor`` R keeps every shard on R nodes of a
    cluster (Weaviate's default: 1); a node that was down catches up by
    Weaviate's async replication, on by default since 1.38. An existing
    collection with another factor is an error: Weaviate does not change it
    by updating the definition. ``multi_tenancy`` makes a collection whose
    objects live in tenants (each isolated, created with
    :func:`ensure_tenant`); an existing collection must agree.
    ``field_vectors`` adds a named vector per media field besides the combined
    one (:func:`field_vector_configs`), to search one modality alone. An
    existing collection gets the ones it lacks (its objects have none under
    them until written again); one that has them is refused without
    ``field_vectors``, since objects written then would leave them out of step.
    """
    from weaviate.classes.config import DataType

    if replication_factor is not None and replication_factor < 1:
        raise ValueError(f"a replication factor is 1 or more, not {replication_factor}")
    if client.collections.exists(name):
        collection = client.collections.get(name)
        tenanted = collection.config.get().multi_tenancy_config.enabled
        if tenanted != multi_tenancy:
            raise ValueError(
                f"collection {name} is multi-tenant: name a tenant (--tenant)"
                if tenanted
                else f"collection {name} is not multi-tenant: drop --tenant, or use a new "
                "collection for tenants"
            )
        if replication_factor is not None:
            existing = collection.config.get().replication_config.factor
            if existing != replication_factor:
                raise ValueError(
                    f"collection {name} exists with replication factor {existing}, not "
                    f"{replication_factor}: Weaviate moves replicas for that (replica "
                    "movement), or ingest into a new collection"
                )
        _check_field_vectors(collection, fields, vector_name, field_vectors)
        return collection
    per_field = field_vector_configs(fields, vector_name) if field_vectors else {}
    types = {f.name: f.data_type for f in fields}
    defaults = {SOURCE_ID: DataType.TEXT, MODALITY: DataType.TEXT_ARRAY}
    for key, data_type in {**defaults, **(metadata or {})}.items():
        types.setdefault(key, data_type)
    vector_config = _weaviate_module_config(bind_vector_config(fields, vector_name))
    definition = {
        "class": name,
        "properties": [_property(name, data_type) for name, data_type in types.items()],
        "vectorConfig": {vector_name: vector_config, **per_field},
    }
    if replication_factor is not None:
        definition["replicationConfig"] = {"factor": replication_factor}
    if multi_tenancy:
        definition["multiTenancyConfig"] = {"enabled": True}
    return client.collections.create_from_dict(definition)


def _check_field_vectors(
    collection, fields: Sequence[MediaField], vector_name: str, field_vectors: bool
) -> None:
    """Give an existing collection the field vectors asked for, or refuse where it has them
    and they are not asked for (objects written then would lack them)."""
    config = collection.config.get()
    vectors = set(config.vector_config or {})
    properties = {p.name for p in config.properties}
    present = sorted(n for n in vectors - {vector_name} if n in properties)
    if field_vectors:
        wanted = field_vector_configs(fields, vector_name)
        missing = {name: c for name, c in wanted.items() if name not in vectors}
        if missing:
            _add_vectors(collection, missing)
    elif present:
        raise ValueError(
            f"collection {config.name} has a vector per media field ({', '.join(present)}): "
            "write it with them (ib-ingest --vector-per-field), or use a new collection"
        )


def ensure_tenant(collection, tenant: str) -> None:
    """Create ``tenant`` in a multi-tenant collection unless it exists."""
    from weaviate.classes.tenants import Tenant

    if not collection.tenants.exists(tenant):
        collection.tenants.create([Tenant(name=tenant)])


def recorded_media_roots(description: str | None) -> list[str]:
    """The folders a collection's ``<field>_uri`` media were ingested from, as recorded in its
    description by :func:`record_media_root`; [] when none are (or the line is not ours)."""
    for line in (description or "").splitlines():
        if line.startswith(MEDIA_ROOTS_LINE):
            try:
                roots = json.loads(line[len(MEDIA_ROOTS_LINE) :])
            except ValueError:
                return []
            return [r for r in roots if isinstance(r, str)] if isinstance(roots, list) else []
    return []


def record_media_root(collection, root: str) -> None:
    """Add ``root`` to the media roots in the collection's description (other text kept).

    The description is part of the collection's schema: writing objects cannot
    change it, so an object cannot widen what ``ib-search`` serves. Roots of
    several ingests accumulate.
    """
    description = collection.config.get().description or ""
    roots = recorded_media_roots(description)
    if root in roots:
        return
    kept = [line for line in description.splitlines() if not line.startswith(MEDIA_ROOTS_LINE)]
    line = MEDIA_ROOTS_LINE + json.dumps([*roots, root])
    collection.config.update(description="\n".join([*kept, line]))


def _property(name: str, data_type) -> dict:
    prop = {"name": name, "dataType": [data_type.value]}
    if name in EXACT_TEXT:
        prop["tokenization"] = "field"
    return prop


def combine_like_weaviate(
    vectors: Mapping[str, np.ndarray], fields: Sequence[MediaField]
) -> np.ndarray:
    """The vector Weaviate stores for an object whose present fields embed to ``vectors``.

    Weaviate's rule (``multi2vec-bind`` vectorizer, ``CombineVectorsWithWeights``):
    the present fields' vectors in modality order (text, image, audio, video,
    imu, thermal, depth; by property name within one); the weights of *all*
    configured fields in the same modality order (config order within one,
    which :func:`bind_vector_config` makes the name order), normalised to sum 1;
    the i-th vector takes the i-th weight; the result is ``sum(w_i · v_i) / n``
    over the n present vectors, or their plain mean without weights. Vectors
    are not normalised first.
    """
    ordered = [
        f
        for m in WEAVIATE_MODALITY_ORDER
        for f in sorted(fields, key=lambda f: f.name)
        if f.modality is m
    ]
    present = [np.asarray(vectors[f.name], dtype=np.float64) for f in ordered if f.name in vectors]
    if not present:
        raise ValueError("no field of the object has a vector")
    stacked = np.stack(present)
    if all(f.weight is None for f in ordered):
        return stacked.mean(axis=0).astype(np.float32)
    weights = np.asarray([f.weight for f in ordered], dtype=np.float64)
    weights = weights / weights.sum()
    combined = (weights[: len(present), None] * stacked).sum(axis=0) / len(present)
    return combined.astype(np.float32)
