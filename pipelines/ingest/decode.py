"""Read each field's bytes and, for local embedding, turn them into model input.

A failure fails only its object: the object goes to the dead-letter output
(stage ``read`` or ``decode``) with the field and the reason, and the rest of
the bundle carries on.
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
from dataclasses import dataclass, field
from typing import Any

import apache_beam as beam
import torch
from apache_beam.io.filesystems import FileSystems

from ib_vectorizer.errors import InputError
from ib_vectorizer.modalities import Modality
from ib_vectorizer.preprocess import Preprocessor

from .objects import Failure, FieldValue, SourceObject
from .progress import JobCounter, StageTime

FAILURES = "failures"


@dataclass
class ReadyObject:
    """An object whose fields are read (and, for local embedding, preprocessed)."""

    source_id: str
    source: str
    properties: dict[str, Any]
    media: dict[str, bytes | str]  # property → raw bytes (media) or text
    modalities: dict[str, Modality]
    uris: dict[str, str] = field(default_factory=dict)
    inputs: dict[str, torch.Tensor] = field(default_factory=dict)  # property → model input
    content_hash: str = ""  # of the inputs and the embedder (see content_hash)

    @property
    def views(self) -> int:
        """Encoder passes this object costs, for sizing batches."""
        return max(1, sum(modality.views_per_item for modality in self.modalities.values()))

    def num_bytes(self) -> int:
        """Raw media plus decoded model inputs: what this object holds in memory."""
        raw = sum(len(content) for content in self.media.values())
        return raw + sum(t.numel() * t.element_size() for t in self.inputs.values())

    def wire_item(self, name: str) -> str:
        """Field ``name`` as Weaviate stores and sends it: text as is, media as base64."""
        content = self.media[name]
        return content if isinstance(content, str) else base64.b64encode(content).decode("ascii")


def read_field(value: FieldValue) -> bytes | str:
    """The field's content: text as str, media as bytes (from a URI or inline)."""
    if value.text is not None:
        return value.text
    if value.data is not None:
        return value.data
    with FileSystems.open(value.uri) as handle:
        data = handle.read()
    if value.modality is Modality.TEXT:
        return data.decode("utf-8")
    return data


class ReadFields(beam.DoFn):
    """SourceObject → ReadyObject with its bytes and content hash, or a ``read`` Failure."""

    def __init__(self, fingerprint: str) -> None:
        """``fingerprint``: what embeds the objects (model, weights, fields), for the hash."""
        self.fingerprint = fingerprint
        self.failed = JobCounter("failed")

    def process(self, obj: SourceObject):
        media: dict[str, bytes | str] = {}
        for name, value in obj.fields.items():
            try:
                media[name] = read_field(value)
            except Exception as err:  # OSError, bad UTF-8, a URI scheme no FileSystem serves
                reason = f"{name}: cannot read {value.describe()}: {err}"
                self.failed.inc()
                yield beam.pvalue.TaggedOutput(
                    FAILURES, Failure(obj.source_id, obj.source, "read", reason)
                )
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


class Decode(beam.DoFn):
    """Media → model input (local embedding), or a ``decode`` Failure naming the field."""

    def __init__(self, preprocessor: Preprocessor | None) -> None:
        """``preprocessor``: the model's (local embedding), or None to keep the raw bytes."""
        self.preprocessor = preprocessor
        self.decoded = JobCounter("decoded")
        self.failed = JobCounter("failed")
        self.time = StageTime("decode")

    def process(self, ready: ReadyObject):
        if self.preprocessor is not None:
            for name, content in ready.media.items():
                modality = ready.modalities[name]
                started = time.perf_counter()
                try:
                    ready.inputs[name] = self.preprocessor.load_item(modality, content)
                except InputError as err:
                    yield self._failure(ready, f"{name} ({err.modality}): {err.reason}")
                    return
                except Exception as err:  # a decoder bug must not stop the job either
                    yield self._failure(ready, f"{name}: {type(err).__name__}: {err}")
                    return
                finally:
                    self.time.add(modality.label, time.perf_counter() - started)
        self.decoded.inc()
        yield ready

    def _failure(self, ready: ReadyObject, reason: str) -> beam.pvalue.TaggedOutput:
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
