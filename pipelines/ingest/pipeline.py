"""The ib-ingest pipeline: read → decode → skip unchanged → embed → combine → write.

:func:`build` adds the whole flow to a Beam pipeline, from the public pieces
of :mod:`pipelines.beam` (the model's loading and sharing, ``WriteToWeaviate``,
``ReadFromWeaviate`` for ``--delete-missing``, the dead letters) and the
job's own steps: reading a directory or manifest (:mod:`.sources`), reading
and hashing fields (:mod:`.decode`), skipping what is unchanged
(:mod:`.incremental`), cutting segments (:mod:`.segments`). Every object's uuid
is ``uuid5(source_id)``, so a re-run replaces instead of duplicating; every
item that cannot be read, decoded, embedded or written becomes a
:class:`~pipelines.beam.Failure` with the stage and the reason, and the job
still finishes. The command line is :mod:`.command`.
"""

from __future__ import annotations

from dataclasses import dataclass

import apache_beam as beam

from ib_vectorizer.modalities import Modality
from ib_vectorizer.options import ModelOptions
from ib_vectorizer.preprocess import Preprocessor
from ib_vectorizer.preprocess.segments import SegmentRule
from ib_vectorizer.zero_shot import LabelScorer

from ..beam.failures import FAILURES, Failure
from ..beam.target import WeaviateTarget
from ..beam.write import WriteToWeaviate
from ..labels import LabelSet, tag_properties
from ..schema import (
    CONTENT_HASH,
    DEFAULT_VECTOR_NAME,
    MODALITY,
    SOURCE_ID,
    MediaField,
    combine_like_weaviate,
    uri_property,
)
from .decode import Decode, ReadFields, ReadyObject
from .elements import EmbeddedObject
from .incremental import DeleteMissing, skip_unchanged
from .inputs import InputSpec
from .model_handler import ObjectModelHandler
from .progress import NAMESPACE, JobCounter
from .reader import ReadObjects
from .segments import is_segmented
from .server_embed import ServerModelHandler

EMBEDDED = JobCounter("embedded")  # objects with a vector


@dataclass(frozen=True)
class IngestConfig:
    spec: InputSpec
    collection: str
    embed: str  # local | server | weaviate
    fields: tuple[MediaField, ...]
    model: ModelOptions
    vectorizer_url: str | None
    batch_size: int
    max_batch_views: int
    store_uri: bool
    share_model: bool
    fingerprint: str = ""  # of the embedder and the fields (see incremental.model_fingerprint)
    force: bool = False  # embed and write every object, changed or not
    delete_missing: bool = False  # delete objects whose source is gone
    segments: SegmentRule | None = None  # cut audio and video into segments (local embedding)
    labels: LabelSet | None = None  # zero-shot tags to store (see pipelines.labels)
    label_scorer: LabelScorer | None = None  # the labels' text vectors, embedded by the launcher
    field_vectors: bool = False  # and a named vector per media field (schema.field_vector_configs)


def to_weaviate_object(ready: ReadyObject, vectors: dict | None, config: IngestConfig) -> dict:
    """The object :class:`WriteToWeaviate` writes: properties as stored (media as base64
    BLOBs, or their URIs) and the combined vector (None: Weaviate embeds the object); with
    ``config.field_vectors`` each field's own vector too, under the field's name."""
    properties = dict(ready.properties)
    properties[SOURCE_ID] = ready.source_id
    modalities = sorted({modality.label for modality in ready.modalities.values()})
    properties[MODALITY] = modalities
    if ready.content_hash:
        properties[CONTENT_HASH] = ready.content_hash
    for name, content in ready.media.items():
        if ready.modalities[name] is Modality.TEXT:
            properties[name] = content
        elif config.store_uri:
            if name in ready.uris:
                properties[uri_property(name)] = ready.uris[name]
        else:
            properties[name] = ready.wire_item(name)
    vector = None
    configured = {f.name for f in config.fields}
    vectors = {k: v for k, v in (vectors or {}).items() if k in configured}
    if vectors:  # else (no field the collection knows): Weaviate decides, and says why
        combined = combine_like_weaviate(vectors, config.fields)
        vector = combined.tolist()
        EMBEDDED.inc()
        if config.labels is not None and config.label_scorer is not None:
            tags = tag_properties(config.label_scorer, config.labels, combined[None], [modalities])
            properties.update(tags[0])
    return {
        "id": ready.source_id,
        "source": ready.source,
        "properties": properties,
        "vector": vector,
        "vectors": {name: v for name, v in vectors.items() if config.field_vectors},
    }


FAILED = JobCounter("failed")


def _batch_failures(failed) -> list[Failure]:
    """RunInference's dead letter (batch, (exception type, repr, traceback)) → Failures."""
    batch, error = failed
    if isinstance(error, tuple) and len(error) == 3:
        kind, described, lines = error
        last = lines[-1].strip() if lines else ""  # "RuntimeError: the message"
        detail = last if last.startswith(kind.__name__) else described
        if issubclass(kind, MemoryError):
            reason = "embedding its batch ran out of memory"
        else:
            reason = f"embedding its batch failed unexpectedly ({detail})"
    else:
        reason = f"embedding its batch failed unexpectedly ({error})"
    FAILED.inc(len(batch))
    return [Failure(o.source_id, o.source, "embed", reason) for o in batch]


class _EveryField(beam.DoFn):
    """With a vector per field, an object lacking a media field → a Failure.

    Weaviate vectorizes a named vector it is not given; from an absent field
    that is an empty vector, which it refuses (and, into a still empty index,
    keeps the object anyway after saying it failed). So such an object is not
    sent.
    """

    def __init__(self, config: IngestConfig) -> None:
        self.config = config

    def process(self, ready: ReadyObject):
        lacking = sorted(f.name for f in self.config.fields if f.name not in ready.modalities)
        if not lacking:
            yield ready
            return
        FAILED.inc()
        reason = (
            f"lacks media field(s) {', '.join(lacking)}: with a vector per field "
            "(--vector-per-field) Weaviate refuses an object without every field"
        )
        failure = Failure(ready.source_id, ready.source, "write", reason)
        yield beam.pvalue.TaggedOutput(FAILURES, failure)


class _Combine(beam.DoFn):
    """Embedded objects → Weaviate objects; an object the model could not embed → a Failure."""

    def __init__(self, config: IngestConfig) -> None:
        self.config = config

    def process(self, embedded: EmbeddedObject):
        if embedded.error is not None:
            FAILED.inc()
            ready = embedded.ready
            failure = Failure(ready.source_id, ready.source, "embed", embedded.error)
            yield beam.pvalue.TaggedOutput(FAILURES, failure)
            return
        yield to_weaviate_object(embedded.ready, embedded.vectors, self.config)


def build(
    pipeline: beam.Pipeline,
    config: IngestConfig,
    target: WeaviateTarget,
    tally: dict[str, list] | None = None,
):
    """Add the ingestion steps to ``pipeline``; returns the PCollection of all failures.

    ``tally`` gets the PCollections the summary counts exactly (see :mod:`.tally`).
    """
    tally = {} if tally is None else tally
    read = pipeline | "Read" >> ReadObjects(config.spec)
    tally["read"] = [(1, read.objects)]
    tally["read_failed"] = [(1, read.failures)]
    tally["skipped"] = [(1, read.skipped)]
    # Local embedding preprocesses here, in parallel, with the model's own geometry.
    preprocessor = Preprocessor.from_options(config.model) if config.embed == "local" else None
    fields = read.objects | "ReadFields" >> beam.ParDo(
        ReadFields(config.fingerprint, config.segments)
    ).with_outputs(FAILURES, main="ready")
    todo = fields.ready if config.force else skip_unchanged(fields.ready, target)
    if not config.force:
        tally["unchanged"] = [(1, fields.ready), (-1, todo)]
    decoded = todo | "Decode" >> beam.ParDo(
        Decode(preprocessor, target, config.segments, config.model.decode_processes)
    ).with_outputs(FAILURES, main="ready")
    failures = [read.failures, fields[FAILURES], decoded[FAILURES]]
    ready = decoded.ready
    if config.field_vectors:
        complete = ready | "EveryField" >> beam.ParDo(_EveryField(config)).with_outputs(
            FAILURES, main="ready"
        )
        failures.append(complete[FAILURES])
        ready = complete.ready
    if config.delete_missing:
        segmented = is_segmented if config.segments is not None else None
        _ = read.objects | "DeleteMissing" >> DeleteMissing(target, segmented)

    if config.embed == "weaviate":  # Weaviate calls the module itself
        objects = ready | "AsObjects" >> beam.Map(lambda r: to_weaviate_object(r, None, config))
    else:
        from apache_beam.ml.inference.base import RunInference

        if config.embed == "local":
            handler = ObjectModelHandler(
                config.model, config.max_batch_views, share_across_processes=config.share_model
            )
        else:
            handler = ServerModelHandler(config.vectorizer_url, config.max_batch_views)
        embedded, dlq = ready | "Embed" >> RunInference(handler).with_exception_handling()
        failures.append(dlq.failed_inferences | "EmbedFailures" >> beam.FlatMap(_batch_failures))
        combined = embedded | "Combine" >> beam.ParDo(_Combine(config)).with_outputs(
            FAILURES, main="objects"
        )
        failures.append(combined[FAILURES])
        objects = combined.objects
        tally["embedded"] = [(1, objects)]
    write = WriteToWeaviate.to_target(
        target,
        vector_name=DEFAULT_VECTOR_NAME,
        batch_size=config.batch_size,
        metrics_namespace=NAMESPACE,
    )
    write_failures = objects | "WriteToWeaviate" >> write
    failures.append(write_failures)
    every_failure = tuple(failures) | "AllFailures" >> beam.Flatten()
    tally["written"] = [(1, objects), (-1, write_failures)]
    tally["failed"] = [(1, every_failure), (-1, read.failures)]
    return every_failure
