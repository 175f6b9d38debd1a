"""``--segment-seconds``: each audio and video file becomes one object per segment.

A segment's id is its source with a W3C media fragment,
``clips/talk.mp4#t=120,130``; it stores ``parent_id`` (the source),
``segment_start_s``, ``segment_end_s``, ``segment_index``, the source's URI in
``<field>_uri`` (not the bytes: a segment of an hour-long file would carry all
of it), and on the last segment ``segment_count``. How a segment is cut and
embedded: :mod:`ib_vectorizer.preprocess.segments`.

The file is never held in memory: it is hashed in chunks, then decoded as a
stream that yields segments as it passes them. Re-runs work per source: every
segment stores a hash of the source's bytes, its metadata, the embedder, the
segment rule and the source id; a source is unchanged when the collection
holds all its segments (as many as the last one's ``segment_count``) with
that hash, looked up for a batch of sources in one aggregate query. A changed
source first loses its old segments (and a whole-file object of the same id),
then gets its new ones, so a shorter file leaves no stale segments behind.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

from ib_vectorizer.errors import MediaError
from ib_vectorizer.modalities import Modality
from ib_vectorizer.preprocess import Preprocessor
from ib_vectorizer.preprocess.segments import (
    SegmentRule,
    audio_segments,
    open_bytes,
    video_segments,
)
from ib_vectorizer.retry import call_with_retries

from ..schema import PARENT_ID
from .decode import FAILURES, ReadyObject, read_field
from .objects import Failure, SourceObject, object_uuid
from .progress import JobCounter
from .write import BACKOFF, CollectionDoFn, WeaviateTarget

log = logging.getLogger(__name__)

SEGMENT_START = "segment_start_s"
SEGMENT_END = "segment_end_s"
SEGMENT_INDEX = "segment_index"
SEGMENT_COUNT = "segment_count"  # on the last segment only; 0 on the others
SEGMENTED = (Modality.AUDIO, Modality.VIDEO)
LOOKUP_BATCH = 100  # sources per aggregate query
_CHUNK = 1 << 20


def segment_properties():
    """The properties segments add to a collection, with their Weaviate types."""
    from weaviate.classes.config import DataType

    return {
        PARENT_ID: DataType.TEXT,
        SEGMENT_START: DataType.NUMBER,
        SEGMENT_END: DataType.NUMBER,
        SEGMENT_INDEX: DataType.INT,
        SEGMENT_COUNT: DataType.INT,
    }


def is_segmented(obj: SourceObject) -> bool:
    """Whether ``obj`` is cut into segments: its one field is audio or video."""
    return len(obj.fields) == 1 and next(iter(obj.fields.values())).modality in SEGMENTED


def fragment_id(source_id: str, start_s: float, end_s: float) -> str:
    """``source#t=start,end`` (W3C media fragment, seconds, at most 3 decimals)."""
    return f"{source_id}#t={_seconds(start_s)},{_seconds(end_s)}"


def _seconds(value: float) -> str:
    return f"{value:.3f}".rstrip("0").rstrip(".")


@dataclass
class Source:
    """A source to segment, with the hash every one of its segments stores."""

    obj: SourceObject
    segment_hash: str

    @property
    def field(self) -> str:
        return next(iter(self.obj.fields))


class HashSources(beam.DoFn):
    """SourceObject → Source: the file hashed in 1 MiB chunks, never held whole."""

    def __init__(self, fingerprint: str, rule: SegmentRule) -> None:
        self.fingerprint = fingerprint
        self.rule = rule
        self.failed = JobCounter("failed")

    def process(self, obj: SourceObject):
        name, value = next(iter(obj.fields.items()))
        digest = hashlib.sha256()
        try:
            if value.uri is None:
                digest.update(value.data or b"")
            else:
                with FileSystems.open(value.uri) as handle:
                    while chunk := handle.read(_CHUNK):
                        digest.update(chunk)
        except Exception as err:
            self.failed.inc()
            reason = f"{name}: cannot read {value.describe()}: {err}"
            yield beam.pvalue.TaggedOutput(
                FAILURES, Failure(obj.source_id, obj.source, "read", reason)
            )
            return
        described = {
            "fingerprint": self.fingerprint,
            "segments": [self.rule.seconds, self.rule.overlap],
            "source_id": obj.source_id,
            "metadata": obj.properties,
            "field": [name, value.modality.value, digest.hexdigest()],
        }
        text = json.dumps(described, sort_keys=True, default=str)
        yield Source(obj, hashlib.sha256(text.encode()).hexdigest())


class SkipCompleteSources(CollectionDoFn):
    """A batch of Sources → those whose segments are not all stored with their hash."""

    def __init__(self, target: WeaviateTarget) -> None:
        super().__init__(target)
        self.unchanged = JobCounter("unchanged")

    def process(self, batch: list[Source]):
        stored = self._complete([s.segment_hash for s in batch])
        for source in batch:
            if source.obj.source_id in stored:
                self.unchanged.inc()
            else:
                yield source

    def _complete(self, hashes: list[str]) -> set[str]:
        """Ids of the sources whose every segment is stored with one of ``hashes``."""
        from weaviate.classes.aggregate import GroupByAggregate
        from weaviate.classes.query import Filter, Metrics

        from .incremental import CONTENT_HASH

        def look_up():
            return self._collection.aggregate.over_all(
                filters=Filter.by_property(CONTENT_HASH).contains_any(hashes),
                group_by=GroupByAggregate(prop=PARENT_ID, limit=len(hashes)),
                total_count=True,
                return_metrics=Metrics(SEGMENT_COUNT).integer(maximum=True),
            )

        result = call_with_retries(
            look_up,
            retryable=lambda err: True,
            backoff=BACKOFF,
            what="looking up segments",
            log=log,
        )
        complete = set()
        for group in result.groups:
            expected = group.properties[SEGMENT_COUNT].maximum or 0
            if expected and group.total_count == expected:
                complete.add(str(group.grouped_by.value))
        return complete


class CutSegments(CollectionDoFn):
    """Source → a ReadyObject per segment with its model input, or a ``decode`` Failure.

    Deletes the source's stale objects first (segments with another hash, and
    a whole-file object of the same id).
    """

    def __init__(self, target: WeaviateTarget, preprocessor: Preprocessor, rule: SegmentRule):
        super().__init__(target)
        self.preprocessor = preprocessor
        self.rule = rule
        self.decoded = JobCounter("decoded")
        self.segments = JobCounter("segments")
        self.failed = JobCounter("failed")

    def process(self, source: Source):
        obj, name = source.obj, source.field
        value = obj.fields[name]
        self._delete_stale(source)
        opener = (
            (lambda: FileSystems.open(value.uri)) if value.uri else open_bytes(read_field(value))
        )
        config = self.preprocessor.config
        if value.modality is Modality.AUDIO:
            segments = audio_segments(
                opener, self.rule, config.audio_num_mel_bins, config.audio_target_len
            )
        else:
            segments = video_segments(opener, self.rule, config.image_size, config.video_frames)
        try:
            for segment in segments:
                self.segments.inc()
                yield self._ready(source, segment)
        except Exception as err:  # MediaError, or a decoder bug: this source only
            detail = str(err) if isinstance(err, MediaError) else f"{type(err).__name__}: {err}"
            self.failed.inc()
            reason = f"{name} ({value.modality.value}): {detail}"
            yield beam.pvalue.TaggedOutput(
                FAILURES, Failure(obj.source_id, obj.source, "decode", reason)
            )
            return
        self.decoded.inc()

    def _ready(self, source: Source, segment) -> ReadyObject:
        obj, name = source.obj, source.field
        value = obj.fields[name]
        properties = dict(obj.properties)
        properties.update(
            {
                PARENT_ID: obj.source_id,
                SEGMENT_START: segment.start_s,
                SEGMENT_END: segment.end_s,
                SEGMENT_INDEX: segment.index,
                SEGMENT_COUNT: segment.index + 1 if segment.last else 0,
            }
        )
        if value.uri is not None:
            properties[f"{name}_uri"] = value.uri
        return ReadyObject(
            source_id=fragment_id(obj.source_id, segment.start_s, segment.end_s),
            source=obj.source,
            properties=properties,
            media={},
            modalities={name: value.modality},
            inputs={name: segment.input},
            content_hash=source.segment_hash,
        )

    def _delete_stale(self, source: Source) -> None:
        from weaviate.classes.query import Filter

        from .incremental import CONTENT_HASH

        parent = source.obj.source_id
        stale = Filter.by_property(PARENT_ID).equal(parent) & Filter.by_property(
            CONTENT_HASH
        ).not_equal(source.segment_hash)
        where = stale | Filter.by_id().equal(object_uuid(parent))
        call_with_retries(
            lambda: self._collection.data.delete_many(where=where),
            retryable=lambda err: True,
            backoff=BACKOFF,
            what=f"deleting stale segments of {parent}",
            log=log,
        )


class Segments(beam.PTransform):
    """SourceObjects to segment → (ReadyObjects with model input, Failures)."""

    def __init__(
        self,
        target: WeaviateTarget,
        preprocessor: Preprocessor,
        rule: SegmentRule,
        fingerprint: str,
        force: bool,
    ) -> None:
        super().__init__()
        self.target, self.preprocessor, self.rule = target, preprocessor, rule
        self.fingerprint, self.force = fingerprint, force

    def expand(self, objects):
        hashed = objects | "HashSources" >> beam.ParDo(
            HashSources(self.fingerprint, self.rule)
        ).with_outputs(FAILURES, main="sources")
        todo = hashed.sources
        if not self.force:
            todo = (
                todo
                | "BatchSegmentLookUps"
                >> beam.BatchElements(min_batch_size=1, max_batch_size=LOOKUP_BATCH)
                | "SkipComplete" >> beam.ParDo(SkipCompleteSources(self.target))
            )
        cut = todo | "CutSegments" >> beam.ParDo(
            CutSegments(self.target, self.preprocessor, self.rule)
        ).with_outputs(FAILURES, main="ready")
        failures = (hashed[FAILURES], cut[FAILURES]) | "SegmentFailures" >> beam.Flatten()
        return cut.ready, failures


def parse_rule(seconds: float | None, overlap: float) -> SegmentRule | None:
    """The rule from ``--segment-seconds``/``--segment-overlap``; ValueError says what is wrong."""
    if seconds is None:
        if overlap:
            raise ValueError("--segment-overlap needs --segment-seconds")
        return None
    try:
        return SegmentRule(seconds, overlap)
    except ValueError as err:
        raise ValueError(f"--segment-seconds/--segment-overlap: {err}") from None
