"""Re-runs that redo only what changed.

Every object stores ``content_hash``: a hash of its inputs and of what embedded
it (:func:`model_fingerprint`). A re-run looks the hashes of a batch of
objects up in Weaviate (one query per batch) and drops the objects whose hash
is unchanged before they are decoded, embedded or written; changed and new
objects go on. ``--force`` skips the look-up. ``--delete-missing`` deletes the
objects whose source is no longer in the input. Both are pipeline stages, so
they run wherever the pipeline runs.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path

import apache_beam as beam

from ib_vectorizer.options import ModelOptions

from ..beam.read import ReadFromWeaviate
from ..beam.target import CollectionDoFn, WeaviateTarget
from ..beam.write import object_uuid
from ..paths import has_scheme
from ..schema import CONTENT_HASH, PARENT_ID, MediaField
from .elements import ReadyObject, SourceToSegment
from .progress import JobCounter
from .segments import complete_sources

LOOKUP_BATCH = 200  # ids per look-up (and per delete)
_EDGE_BYTES = 1 << 20


def checkpoint_identity(path: str | None) -> str:
    """A cheap, content-based identity of a weights file: its size and its first and last MiB.

    Hashing 4.5 GB on every run would cost more than many re-runs save; a
    changed checkpoint changes its size or its ends in practice.
    """
    if path is None:
        return "random weights"
    if has_scheme(path):
        return path
    file = Path(path)
    size = file.stat().st_size
    digest = hashlib.sha256(str(size).encode())
    with file.open("rb") as handle:
        digest.update(handle.read(_EDGE_BYTES))
        handle.seek(max(0, size - _EDGE_BYTES))
        digest.update(handle.read(_EDGE_BYTES))
    return digest.hexdigest()


def model_fingerprint(
    embed: str,
    model: ModelOptions,
    fields: tuple[MediaField, ...],
    vectorizer_meta: dict | None,
    field_vectors: bool = False,
) -> str:
    """What the stored vectors follow from besides the inputs: the embedder and the fields.

    Local embedding: the architecture and the checkpoint. A server (ours, or the
    one Weaviate calls): its ``/meta`` (model, checkpoint, normalisation). Always
    the media fields and their weights, which decide how vectors are combined.
    The image decode mode and int8 count when they are not the defaults
    (``exact``, ``none``), so collections written before they existed keep
    their hashes. So does ``field_vectors`` (a vector per field) when on: turning
    it on rewrites every object, and Weaviate, which keeps an object's vectors
    when its properties are unchanged, computes the new ones (``--embed weaviate``).
    """
    if embed == "local":
        path = None if model.random_weights else model.checkpoint
        if path is not None and not has_scheme(path):
            path = str(model.checkpoint_path())
        embedder = {"config": asdict(model.config()), "weights": checkpoint_identity(path)}
        image_decode, quantize = model.image_decode, model.quantize
    else:
        meta = dict(vectorizer_meta or {})
        embedder = {k: meta.get(k) for k in ("model", "checkpoint", "embeddingDim", "normalized")}
        image_decode = meta.get("imageDecode") or "exact"
        quantize = meta.get("quantize") or "none"
    if image_decode != "exact":
        embedder["image_decode"] = image_decode
    if quantize != "none":
        embedder["quantize"] = quantize
    described = {
        "embed": embed,
        "embedder": embedder,
        "fields": [(f.name, f.modality.value, f.weight) for f in fields],
    }
    if field_vectors:
        described["field_vectors"] = True
    return hashlib.sha256(json.dumps(described, sort_keys=True).encode()).hexdigest()


class SkipUnchanged(CollectionDoFn):
    """A batch of ReadyObjects → those whose stored hash differs (new or changed).

    A segmented :class:`~.elements.SourceToSegment` in the batch is unchanged when all
    its segments are stored with its hash.
    """

    def __init__(self, target: WeaviateTarget) -> None:
        super().__init__(target)
        self.unchanged = JobCounter("unchanged")

    def process(self, batch: list[ReadyObject | SourceToSegment]):
        sources = [item for item in batch if isinstance(item, SourceToSegment)]
        objects = [item for item in batch if not isinstance(item, SourceToSegment)]
        if sources:
            hashes = [s.segment_hash for s in sources]
            complete = self.call(
                lambda collection: complete_sources(collection, hashes),
                what="looking up segments",
            )
            for source in sources:
                if source.obj.source_id in complete:
                    self.unchanged.inc()
                else:
                    yield source
        if not objects:
            return
        stored = self._stored_hashes([object_uuid(o.source_id) for o in objects])
        for obj in objects:
            if stored.get(object_uuid(obj.source_id)) == obj.content_hash:
                self.unchanged.inc()
            else:
                yield obj

    def _stored_hashes(self, uuids: list[str]) -> dict[str, str]:
        from weaviate.classes.query import Filter

        result = self.call(
            lambda collection: collection.query.fetch_objects(
                filters=Filter.by_id().contains_any(uuids),
                limit=len(uuids),
                return_properties=[CONTENT_HASH],
            ),
            what="looking up hashes",
        )
        return {str(o.uuid): o.properties.get(CONTENT_HASH) for o in result.objects}


def skip_unchanged(objects, target: WeaviateTarget):
    """The objects of ``objects`` that are new or changed since the last run."""
    return (
        objects
        | "BatchLookUps" >> beam.BatchElements(min_batch_size=1, max_batch_size=LOOKUP_BATCH)
        | "SkipUnchanged" >> beam.ParDo(SkipUnchanged(target))
    )


def _source_key(uuid: str, parent_id: str | None) -> str:
    """What decides whether a stored object's source is still there: its id, or its parent's."""
    return f"parent:{parent_id}" if parent_id else uuid


def _stored_key(stored: dict) -> tuple[str, str]:
    """A stored object → (source key, uuid)."""
    return _source_key(stored["uuid"], stored["properties"].get(PARENT_ID)), stored["uuid"]


class _DeleteObjects(CollectionDoFn):
    def __init__(self, target: WeaviateTarget) -> None:
        super().__init__(target)
        self.deleted = JobCounter("deleted")

    def process(self, uuids: list[str]):
        from weaviate.classes.query import Filter

        self.call(
            lambda collection: collection.data.delete_many(
                where=Filter.by_id().contains_any(uuids)
            ),
            what=f"deleting {len(uuids)} objects",
        )
        self.deleted.inc(len(uuids))


class DeleteMissing(beam.PTransform):
    """Deletes the collection's objects whose source is not among ``read`` (SourceObjects).

    The stored ids are listed when the pipeline starts, so objects this run
    writes are never candidates. ``segmented`` tells which sources this run
    cuts into segments: those keep their segments (matched by ``parent_id``)
    and lose a whole-file object; the others keep their object and lose any
    segments an earlier run made.
    """

    def __init__(self, target: WeaviateTarget, segmented=None) -> None:
        super().__init__()
        self.target = target
        self.segmented = segmented

    def expand(self, read):
        segmented = self.segmented

        def present_key(obj) -> tuple[str, str]:
            if segmented is not None and segmented(obj):
                return _source_key("", obj.source_id), ""
            return _source_key(object_uuid(obj.source_id), None), ""

        present = read | "PresentIds" >> beam.Map(present_key)
        stored = (
            read.pipeline
            | "Stored" >> ReadFromWeaviate.from_target(self.target, properties=[PARENT_ID])
            | "StoredIds" >> beam.Map(_stored_key)
        )
        return (
            (present, stored)
            | "Both" >> beam.Flatten()
            | "BySource" >> beam.GroupByKey()
            | "OnlyStored" >> beam.FlatMap(lambda kv: [] if "" in kv[1] else list(kv[1]))
            | "BatchDeletes" >> beam.BatchElements(min_batch_size=1, max_batch_size=LOOKUP_BATCH)
            | "Delete" >> beam.ParDo(_DeleteObjects(self.target))
        )
