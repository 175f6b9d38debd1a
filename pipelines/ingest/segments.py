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
from collections.abc import Iterator

from apache_beam.io.filesystems import FileSystems

from ib_vectorizer.modalities import Modality
from ib_vectorizer.preprocess import Preprocessor
from ib_vectorizer.preprocess.limits import DecodeLimits
from ib_vectorizer.preprocess.segments import (
    Segment,
    SegmentRule,
    audio_segments,
    open_bytes,
    video_segments,
)
from ib_vectorizer.retry import call_with_retries

from ..beam.target import BACKOFF
from ..beam.write import object_uuid
from ..schema import (
    CONTENT_HASH,
    PARENT_ID,
    SEGMENT_COUNT,
    SEGMENT_END,
    SEGMENT_INDEX,
    SEGMENT_START,
    uri_property,
)
from .elements import ReadyObject, SourceObject, SourceToSegment

log = logging.getLogger(__name__)

SEGMENTED = (Modality.AUDIO, Modality.VIDEO)
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


def hash_source(obj: SourceObject, fingerprint: str, rule: SegmentRule) -> SourceToSegment:
    """``obj`` with the hash its segments store; the file is read in 1 MiB chunks, never whole.

    Raises OSError (or what the file system raises) when the file cannot be read.
    """
    name, value = next(iter(obj.fields.items()))
    digest = hashlib.sha256()
    if value.uri is None:
        digest.update(value.data or b"")
    else:
        with FileSystems.open(value.uri) as handle:
            while chunk := handle.read(_CHUNK):
                digest.update(chunk)
    described = {
        "fingerprint": fingerprint,
        "segments": [rule.seconds, rule.overlap],
        "source_id": obj.source_id,
        "metadata": obj.properties,
        "field": [name, value.modality.value, digest.hexdigest()],
    }
    text = json.dumps(described, sort_keys=True, default=str)
    return SourceToSegment(obj, hashlib.sha256(text.encode()).hexdigest())


def complete_sources(collection, hashes: list[str]) -> set[str]:
    """Ids of the sources whose every segment is stored with one of ``hashes`` (one query)."""
    from weaviate.classes.aggregate import GroupByAggregate
    from weaviate.classes.query import Filter, Metrics

    def look_up():
        return collection.aggregate.over_all(
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


class SegmentCutter:
    """SourceToSegment → ReadyObjects, one per segment, with model input; stale ones deleted first.

    Used by the pipeline's decode step, whose Weaviate collection it borrows
    for the deletes: a changed source loses its segments with another hash,
    and a whole-file object of the same id, before it gets its new ones.
    """

    def __init__(self, preprocessor: Preprocessor, rule: SegmentRule) -> None:
        self.preprocessor = preprocessor
        self.rule = rule

    def cut(self, source: SourceToSegment, collection) -> Iterator[ReadyObject]:
        """The source's segments as they are decoded; raises MediaError (or a decoder's error)."""
        value = source.obj.fields[source.field]
        delete_stale(collection, source)
        opener = (lambda: FileSystems.open(value.uri)) if value.uri else open_bytes(value.read())
        config = self.preprocessor.config
        limits = DecodeLimits(self.preprocessor.max_item_bytes)
        if value.modality is Modality.AUDIO:
            segments = audio_segments(
                opener, self.rule, config.audio_num_mel_bins, config.audio_target_len, limits
            )
        else:
            segments = video_segments(
                opener, self.rule, config.image_size, config.video_frames, limits
            )
        for segment in segments:
            yield segment_object(source, segment)


def segment_object(source: SourceToSegment, segment: Segment) -> ReadyObject:
    """One segment as an object: the source's metadata, the time range, the source's URI."""
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
        properties[uri_property(name)] = value.uri
    return ReadyObject(
        source_id=fragment_id(obj.source_id, segment.start_s, segment.end_s),
        source=obj.source,
        properties=properties,
        media={},
        modalities={name: value.modality},
        inputs={name: segment.input},
        content_hash=source.segment_hash,
    )


def delete_stale(collection, source: SourceToSegment) -> None:
    """Delete the source's segments with another hash, and a whole-file object of its id."""
    from weaviate.classes.query import Filter

    parent = source.obj.source_id
    stale = Filter.by_property(PARENT_ID).equal(parent) & Filter.by_property(
        CONTENT_HASH
    ).not_equal(source.segment_hash)
    where = stale | Filter.by_id().equal(object_uuid(parent))
    call_with_retries(
        lambda: collection.data.delete_many(where=where),
        retryable=lambda err: True,
        backoff=BACKOFF,
        what=f"deleting stale segments of {parent}",
        log=log,
    )


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
