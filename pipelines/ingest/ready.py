"""An object whose fields are read: what flows from reading to embedding."""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from typing import Any

import torch
from apache_beam.io.filesystems import FileSystems

from ib_vectorizer.modalities import Modality

from .objects import FieldValue


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
