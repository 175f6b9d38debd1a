"""What the ingestion pipeline reads: source objects and their fields."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ib_vectorizer.modalities import Modality


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


@dataclass
class SourceObject:
    """One Weaviate object to be: its id, media/text fields and metadata properties."""

    source_id: str  # stable id from the source: relative path or manifest id
    source: str  # where it came from (file path or manifest:row), for reports
    fields: dict[str, FieldValue]  # property name → value
    properties: dict[str, Any] = field(default_factory=dict)  # metadata copied as-is
