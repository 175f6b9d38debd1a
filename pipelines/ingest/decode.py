"""Read each field's bytes and, for local embedding, turn them into model input.

A failure fails only its object: the object goes to the dead-letter output
(stage ``read`` or ``decode``) with the field and the reason, and the rest of
the bundle carries on.

With ``--segment-seconds``, an audio or video source takes the same steps as
a :class:`~.elements.SourceToSegment`: hashed here without being read into memory,
cut into segments by :class:`Decode`. The steps dispatch on the element
rather than splitting the stream and merging it again, because a merge
(Flatten) is where a runner may hold a whole PCollection in memory.
"""

from __future__ import annotations

import hashlib
import json
import time

import apache_beam as beam
from apache_beam.utils.shared import Shared

from ib_vectorizer.errors import InputError, MediaError, MediaTooLong, unexpected_failure
from ib_vectorizer.preprocess import Preprocessor
from ib_vectorizer.preprocess.processes import DecodingProcesses
from ib_vectorizer.preprocess.segments import SegmentRule

from ..beam.failures import FAILURES, Failure
from ..beam.target import CollectionDoFn, WeaviateTarget
from .elements import ReadyObject, SourceObject, SourceToSegment
from .progress import JobCounter, StageTime
from .segments import SegmentCutter, hash_source, is_segmented


class ReadFields(beam.DoFn):
    """SourceObject → ReadyObject with its bytes and content hash, or a ``read`` Failure.

    With ``--segment-seconds`` an audio or video source becomes a SourceToSegment.
    """

    def __init__(self, fingerprint: str, segments: SegmentRule | None = None) -> None:
        """``fingerprint``: what embeds the objects (model, weights, fields), for the hash.

        ``segments``: the rule that cuts audio and video sources, if any.
        """
        self.fingerprint = fingerprint
        self.segments = segments
        self.failed = JobCounter("failed")

    def process(self, obj: SourceObject):
        if self.segments is not None and is_segmented(obj):
            try:
                yield hash_source(obj, self.fingerprint, self.segments)
            except Exception as err:  # OSError, a URI scheme no FileSystem serves
                name, value = next(iter(obj.fields.items()))
                yield self._failure(obj, f"{name}: cannot read {value.describe()}: {err}")
            return
        media: dict[str, bytes | str] = {}
        for name, value in obj.fields.items():
            try:
                media[name] = value.read()
            except Exception as err:  # OSError, bad UTF-8, a URI scheme no FileSystem serves
                yield self._failure(obj, f"{name}: cannot read {value.describe()}: {err}")
                return
        ready = ReadyObject(
            source_id=obj.source_id,
            source=obj.source,
            properties=dict(obj.properties),
            media=media,
            modalities={name: value.modality for name, value in obj.fields.items()},
            uris={name: v.uri for name, v in obj.fields.items() if v.uri is not None},
        )
        ready.content_hash = content_hash(self.fingerprint, ready)
        yield ready

    def _failure(self, obj: SourceObject, reason: str) -> beam.pvalue.TaggedOutput:
        self.failed.inc()
        return beam.pvalue.TaggedOutput(
            FAILURES, Failure(obj.source_id, obj.source, "read", reason)
        )


class Decode(CollectionDoFn):
    """Media → model input (local embedding), or a ``decode`` Failure naming the field.

    A :class:`~.elements.SourceToSegment` becomes its segments, each a ReadyObject with
    its model input, yielded as the stream is decoded.
    """

    def __init__(
        self,
        preprocessor: Preprocessor | None,
        target: WeaviateTarget,
        segments: SegmentRule | None = None,
        decode_processes: int = 0,
    ) -> None:
        """``preprocessor``: the model's (local embedding), or None to keep the raw bytes.

        ``decode_processes``: audio and video decoded in that many processes,
        one pool per worker process shared by its threads.
        """
        super().__init__(target)
        self.preprocessor = preprocessor
        self.decode_processes = decode_processes
        self._shared_decoders = Shared()
        self.cutter = SegmentCutter(preprocessor, segments) if segments is not None else None
        self.decoded = JobCounter("decoded")
        self.segments = JobCounter("segments")
        self.failed = JobCounter("failed")
        self.time = StageTime("decode")

    def setup(self) -> None:
        if self.cutter is not None:  # Weaviate only for deleting a changed source's segments
            super().setup()
        self._decoders = DecodingProcesses()
        if self.decode_processes and self.preprocessor is not None:
            processes = self.decode_processes
            self._decoders = self._shared_decoders.acquire(lambda: DecodingProcesses(processes))

    def process(self, ready: ReadyObject | SourceToSegment):
        if isinstance(ready, SourceToSegment):
            yield from self._cut(ready)
            return
        if self.preprocessor is not None:
            for name, content in ready.media.items():
                modality = ready.modalities[name]
                started = time.perf_counter()
                try:
                    ready.inputs[name] = self._decoders.load_item(
                        self.preprocessor, modality, content
                    )
                except InputError as err:
                    reason = f"{name} ({err.modality}): {err.reason}"
                    if isinstance(err.cause, MediaTooLong):
                        reason += "; ingest long recordings as segments with --segment-seconds"
                    yield self._failure(ready, reason)
                    return
                except Exception as err:  # a decoder bug must not stop the job either
                    failure = unexpected_failure(err, "decoding it")
                    yield self._failure(ready, f"{name} ({modality.label}): {failure}")
                    return
                finally:
                    self.time.add(modality.label, time.perf_counter() - started)
        self.decoded.inc()
        yield ready

    def _cut(self, source: SourceToSegment):
        name, value = source.field, source.obj.fields[source.field]
        started = time.perf_counter()
        try:
            for segment in self.cutter.cut(source, self._collection):
                self.segments.inc()
                yield segment
        except InputError as err:
            yield self._failure(source.obj, f"{name} ({err.modality}): {err.reason}")
            return
        except MediaError as err:
            yield self._failure(source.obj, f"{name} ({value.modality.value}): {err}")
            return
        except Exception as err:  # a decoder bug must not stop the job either
            failure = unexpected_failure(err, "decoding it")
            yield self._failure(source.obj, f"{name} ({value.modality.label}): {failure}")
            return
        finally:
            self.time.add(value.modality.label, time.perf_counter() - started)
        self.decoded.inc()

    def _failure(self, ready: ReadyObject | SourceObject, reason: str):
        self.failed.inc()
        failure = Failure(ready.source_id, ready.source, "decode", reason)
        return beam.pvalue.TaggedOutput(FAILURES, failure)


def content_hash(fingerprint: str, ready: ReadyObject) -> str:
    """What an object's stored vector and properties follow from: its inputs and the embedder.

    SHA-256 over the embedder's fingerprint, the metadata properties and every
    field's name, modality and content, so a re-run can tell an unchanged
    object from a changed one without decoding or embedding it.
    """
    digest = hashlib.sha256(fingerprint.encode())
    metadata = json.dumps(ready.properties, sort_keys=True, default=str)
    digest.update(hashlib.sha256(metadata.encode()).digest())
    for name in sorted(ready.media):
        content = ready.media[name]
        data = content.encode() if isinstance(content, str) else content
        digest.update(f"{name}\0{ready.modalities[name].value}\0".encode())
        digest.update(hashlib.sha256(data).digest())
    return digest.hexdigest()
