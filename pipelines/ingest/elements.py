"""What flows through ``ib-ingest``, in the order it flows.

- :class:`FieldValue`: one field of an object before it is read (a URI, inline bytes or text).
- :class:`SourceObject`: an object as listed or read from a manifest: id, fields, metadata.
- :class:`Skipped`: a directory's file that is no object (not media, or an OS's own).
- :class:`SourceToSegment`: an audio or video object that ``--segment-seconds`` cuts.
- :class:`ReadyObject`: an object whose fields are read (and, for local embedding, decoded).
- :class:`EmbeddedObject`: a ReadyObject with its vectors, on its way to Weaviate.

What fails on the way becomes a :class:`pipelines.beam.failures.Failure`.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from apache_beam.io.filesystems import FileSystems

from ib_vectorizer.modalities import Modality

if TYPE_CHECKING:
    import numpy as np
    import torch

NOT_MEDIA = "not media"  # why a Skipped file is no object
OS_FILES = "OS files"


@dataclass(frozen=True)
class FieldValue:
    """One media or text field of an object, before it is read.

    Exactly one of ``uri`` (a path or any URI Beam's FileSystems read: gs://,
    s3://, ...), ``data`` (inline bytes) or ``text`` is set.
    """

    modality: Modality
    uri: str | None = None
    data: bytes | None = None
    text: str | None = None

    def describe(self) -> str:
        """Where the value came from, for error reports."""
        if self.uri is not None:
            return self.uri
        if self.text is not None:
            return "inline text"
        return f"inline {len(self.data or b'')} bytes"

    def read(self) -> bytes | str:
        """The field's content: text as str, media as bytes (from its URI or inline)."""
        if self.text is not None:
            return self.text
        if self.data is not None:
            return self.data
        with FileSystems.open(self.uri) as handle:
            data = handle.read()
        if self.modality is Modality.TEXT:
            return data.decode("utf-8")
        return data


@dataclass
class SourceObject:
    """One Weaviate object to be: its id, media/text fields and metadata properties."""

    source_id: str  # stable id from the source: relative path or manifest id
    source: str  # where it came from (file path or manifest:row), for reports
    fields: dict[str, FieldValue]  # property name → value
    properties: dict[str, Any] = field(default_factory=dict)  # metadata copied as-is


@dataclass(frozen=True)
class Skipped:
    """A file of a directory that is no object, and why: ``NOT_MEDIA`` or ``OS_FILES``.

    ``kind`` is what the summary names it by, with ``source_id`` as the
    example: the extension (``.md``) or the name (``.DS_Store``, ``._*``).
    """

    source_id: str
    why: str
    kind: str


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


@dataclass
class SourceToSegment:
    """An audio or video object to cut into segments (``--segment-seconds``), with the hash
    every one of its segments stores (see :mod:`.segments`)."""

    obj: SourceObject
    segment_hash: str

    @property
    def field(self) -> str:
        return next(iter(self.obj.fields))


@dataclass
class EmbeddedObject:
    """A ReadyObject with a unit vector per field, or why it could not be embedded."""

    ready: ReadyObject
    vectors: dict[str, np.ndarray]  # property → unit vector
    error: str | None = None  # why this one object could not be embedded (a dead letter)
