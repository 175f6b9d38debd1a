"""Files and manifest rows turned into ``SourceObject``s: pure, testable without Beam.

A directory holds one object per file, its id the path relative to the root.
A first-level folder named after a modality (``image/``, ``audio/``, ...)
fixes the modality of everything under it; elsewhere the extension decides.
What no modality claims there (``README.md``, a ``.json`` sidecar) is not
media, and what an operating system leaves behind (``.DS_Store``,
``Thumbs.db``, ``desktop.ini``, AppleDouble ``._*`` files) is no object
anywhere: both are :class:`Skipped`. A vector image (``.svg``, ``.eps``, ...)
outside the modality folders is an error: it must be rasterised first.

A manifest row is one object (see ``inputs`` for which column is what).
Inline bytes: Parquet binary cells are bytes already. In CSV and JSONL a
media cell that reads ``base64:<payload>`` or is a data URI
(``data:image/png;base64,<payload>``) holds the bytes themselves; any other
string is a path or URI. Relative local paths resolve against the manifest's
folder; absolute paths and URIs with a scheme (``gs://``, ``s3://``) are
kept. Text cells are the text itself. Metadata cells become JSON-compatible
values, which is what a Weaviate property can hold.
"""

from __future__ import annotations

import base64
import datetime
import decimal
import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from ib_vectorizer.errors import MediaError
from ib_vectorizer.inline import inline_bytes
from ib_vectorizer.modalities import Modality

from ..paths import relpath, resolve
from .elements import NOT_MEDIA, OS_FILES, FieldValue, Skipped, SourceObject
from .inputs import InputSpec, modality_of_column

_FOLDERS = {modality.label: modality for modality in Modality}  # first-level folder names

_IMAGE_EXTENSIONS = (
    ".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".avif",
)  # fmt: skip
_AUDIO_EXTENSIONS = (".wav", ".flac", ".mp3", ".ogg", ".oga", ".opus", ".m4a", ".aac", ".wma")
_VIDEO_EXTENSIONS = (".mp4", ".webm", ".mov", ".mkv", ".avi", ".m4v")
_EXTENSIONS: dict[str, Modality] = {
    **dict.fromkeys(_IMAGE_EXTENSIONS, Modality.VISION),
    **dict.fromkeys(_AUDIO_EXTENSIONS, Modality.AUDIO),
    **dict.fromkeys(_VIDEO_EXTENSIONS, Modality.VIDEO),
    ".csv": Modality.IMU,
    ".npy": Modality.IMU,
    ".txt": Modality.TEXT,
}
# Vector images: their pixels depend on a rasteriser. The decoders refuse them by content
# with the same words (ib_vectorizer.preprocess.image.vector_image_error).
_VECTOR_EXTENSIONS = {
    ".svg": "SVG", ".svgz": "SVGZ", ".eps": "EPS", ".ai": "Adobe Illustrator",
    ".wmf": "WMF/EMF", ".emf": "WMF/EMF",
}  # fmt: skip
# What operating systems leave in folders (Finder, Explorer), compared in lower case;
# and AppleDouble files, "._" and the name of the file they describe.
_OS_FILES = frozenset({".ds_store", "thumbs.db", "ehthumbs.db", "desktop.ini", "icon\r"})


# -- files ---------------------------------------------------------------------------------------


def _extension(name: str) -> str:
    """``.md`` of ``README.md``; the whole name, lower-cased, when it has no extension."""
    stem, dot, extension = name.rpartition(".")
    return "." + extension.lower() if dot and stem else name.lower()


def file_to_object(path: str, root: str) -> SourceObject | Skipped | None:
    """The object file ``path`` under ``root`` becomes, or why it becomes none.

    None for folder markers and hidden files and folders; :class:`Skipped`
    for a file an OS made (anywhere) and for one outside the modality folders
    whose extension no modality claims. Raises ValueError for a vector image
    outside the modality folders (inside them, decoding refuses it by content).
    """
    relative = relpath(path, root)
    if not relative or relative.endswith("/"):  # an object store's folder marker
        return None
    *folders, name = relative.split("/")
    if any(part.startswith(".") for part in folders):
        return None
    if name.startswith("._"):
        return Skipped(relative, OS_FILES, "._*")
    if name.lower() in _OS_FILES:
        return Skipped(relative, OS_FILES, name.lower())
    if name.startswith("."):
        return None
    if folders and folders[0] in _FOLDERS:
        modality = _FOLDERS[folders[0]]
    else:
        extension = _extension(name)
        if extension in _VECTOR_EXTENSIONS:
            raise ValueError(
                f"a vector image ({_VECTOR_EXTENSIONS[extension]}): rasterise it first "
                f"(e.g. to PNG)"
            )
        modality = _EXTENSIONS.get(extension)
        if modality is None:
            return Skipped(relative, NOT_MEDIA, extension)
    return SourceObject(relative, path, {modality.label: FieldValue(modality, uri=path)})


# -- rows ----------------------------------------------------------------------------------------


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def row_id(row: Mapping[str, Any], id_column: str) -> str | None:
    """The row's id as a string; None when the cell is empty, NaN or blank."""
    value = row.get(id_column)
    if isinstance(value, np.generic):
        value = value.item()
    if _missing(value):
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)  # pandas turns int ids with gaps into floats
    elif isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    value = str(value)
    return value if value.strip() else None


def _field_value(column: str, modality: Modality, value: Any, manifest_dir: str):
    """One media/text cell as a FieldValue; None when empty."""
    if _missing(value):
        return None
    if isinstance(value, bytearray | memoryview):
        value = bytes(value)
    if modality is Modality.TEXT:
        if isinstance(value, bytes):
            try:
                value = value.decode("utf-8")
            except UnicodeDecodeError as err:
                raise ValueError(f"column {column!r}: text is not UTF-8 ({err})") from None
        if not isinstance(value, str):
            raise ValueError(
                f"column {column!r} holds a value of type {type(value).__name__}, not text"
            )
        return FieldValue(modality, text=value) if value.strip() else None
    if isinstance(value, bytes):
        return FieldValue(modality, data=value) if value else None
    if not isinstance(value, str):
        raise ValueError(
            f"column {column!r} holds a value of type {type(value).__name__}, "
            f"not a path, URI or bytes"
        )
    value = value.strip()
    if not value:
        return None
    try:
        data = inline_bytes(value)
    except MediaError as err:
        raise ValueError(f"column {column!r}: {err}") from None
    if data is not None:
        return FieldValue(modality, data=data) if data else None
    return FieldValue(modality, uri=resolve(value, manifest_dir))


def _json_value(value: Any) -> Any:
    """A metadata value as JSON-compatible Python: what a Weaviate property can hold."""
    if isinstance(value, np.generic | np.ndarray):
        value = value.tolist()
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float | decimal.Decimal):
        value = float(value)
        return value if math.isfinite(value) else None
    if isinstance(value, datetime.date | datetime.time):
        return value.isoformat()
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, Mapping):
        return {str(k): _json_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_json_value(v) for v in value]
    return str(value)


def row_to_object(
    row: Mapping[str, Any], spec: InputSpec, manifest_dir: str, row_label: str
) -> SourceObject:
    """The object a manifest row describes.

    Raises ValueError when the row has no id or no media/text at all, or
    when a media cell cannot be a path, URI or bytes.
    """
    source_id = row_id(row, spec.id_column)
    if source_id is None:
        raise ValueError(f"no {spec.id_column!r} value")
    fields: dict[str, FieldValue] = {}
    properties: dict[str, Any] = {}
    media: list[str] = []
    for column, value in row.items():
        if column == spec.id_column:
            continue
        modality = modality_of_column(column, spec.modality_columns)
        if modality is None:
            properties[column] = _json_value(value)
            continue
        media.append(column)
        cell = _field_value(column, modality, value, manifest_dir)
        if cell is not None:
            fields[column] = cell
    if not fields:
        raise ValueError(
            f"no media or text (empty: {', '.join(media)})" if media else "no media or text column"
        )
    return SourceObject(source_id, row_label, fields, properties)
