"""Where ``ib-ingest`` gets its objects: a directory tree or a manifest.

A directory holds one object per file, its id the path relative to the root.
A first-level folder named after a modality (``image/``, ``audio/``, ...)
fixes the modality of everything under it; elsewhere the extension decides.

A manifest (Parquet, CSV or JSONL) holds one object per row: an id column,
media columns (paths/URIs or inline bytes), text columns, and metadata
columns copied as properties. A column holds a modality when it is named
after it (``image``, ``text``) or starts with that name and ``_``
(``image_front``, ``text_caption``), or when ``--modality-columns`` says so.

Inline bytes: Parquet binary cells are bytes already. In CSV and JSONL a
media cell that reads ``base64:<payload>`` or is a data URI
(``data:image/png;base64,<payload>``) holds the bytes themselves; any other
string is a path or URI. Relative local paths resolve against the manifest's
folder; absolute paths and URIs with a scheme (``gs://``, ``s3://``) are
kept. Text cells are the text itself.

CSV is read line by line with the ``csv`` module, so quoted cells may span
lines; its values stay strings (CSV carries no types) and an empty cell
reads as ``None``. Text manifests may be compressed (``.gz``, ``.bz2``,
``.zst``, ...). What cannot be read (an unknown file type, a row without id
or media, a malformed line) becomes a ``Failure`` with stage ``read``, named
``path:row N`` (Parquet, counted from 0 like pyarrow) or ``path:line N``
(CSV/JSONL, counted from 1 like an editor).
"""

from __future__ import annotations

import base64
import binascii
import csv
import datetime
import decimal
import json
import math
import os
import re
import urllib.parse
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import apache_beam as beam
import numpy as np
import pyarrow.parquet as pq
from apache_beam.io import fileio
from apache_beam.io.filesystem import CompressionTypes, FileMetadata
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics

from ib_vectorizer.modalities import Modality

from .objects import Failure, FieldValue, SourceObject

OBJECTS = "objects"
FAILURES = "failures"
STAGE = "read"
METRICS_NAMESPACE = "ib_ingest"

# Property (and folder, and column prefix) name per modality, in listing order.
FIELD_OF: dict[Modality, str] = {
    Modality.VISION: "image",
    Modality.AUDIO: "audio",
    Modality.VIDEO: "video",
    Modality.DEPTH: "depth",
    Modality.THERMAL: "thermal",
    Modality.IMU: "imu",
    Modality.TEXT: "text",
}
_MODALITY_NAMED = {name: modality for modality, name in FIELD_OF.items()}
_MODALITY_ALIASES = {**_MODALITY_NAMED, "vision": Modality.VISION}

_IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
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

_MANIFEST_KINDS = {
    ".parquet": "parquet",
    ".pq": "parquet",
    ".csv": "csv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
}
_COMPRESSED = (".gz", ".bz2", ".deflate", ".zst", ".zstd", ".xz", ".lzma")
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_JSONL_SAMPLE_LINES = 1000  # lines whose keys plan a JSONL manifest's columns
_PARQUET_BATCH_ROWS = 256  # rows per decoded batch: inline media make rows large
_CSV_FIELD_LIMIT = 2**31 - 1  # inline base64 media outgrow csv's 128 KiB default


def modality_of_column(
    name: str, overrides: Mapping[str, Modality] | None = None
) -> Modality | None:
    """The modality a manifest column holds, or None for a metadata column."""
    if overrides and name in overrides:
        return overrides[name]
    prefix = name.split("_", 1)[0]
    return _MODALITY_NAMED.get(prefix)


def _modality_named(name: str) -> Modality:
    try:
        return _MODALITY_ALIASES[name.strip().lower()]
    except KeyError:
        names = ", ".join(FIELD_OF.values())
        raise ValueError(
            f"unknown modality {name!r}: expected one of {names} (or vision)"
        ) from None


def parse_modality_columns(text: str) -> dict[str, Modality]:
    """``"image=photo,audio=clip"`` → ``{"photo": VISION, "clip": AUDIO}``."""
    columns: dict[str, Modality] = {}
    for item in (text or "").split(","):
        if not item.strip():
            continue
        name, sep, column = item.partition("=")
        column = column.strip()
        if not sep or not name.strip() or not column:
            raise ValueError(
                f"--modality-columns takes MODALITY=COLUMN pairs separated by commas "
                f"(e.g. image=photo,audio=clip); got {item.strip()!r}"
            )
        try:
            modality = _modality_named(name)
        except ValueError as err:
            raise ValueError(f"--modality-columns: {err}") from None
        if columns.get(column, modality) is not modality:
            raise ValueError(
                f"--modality-columns gives column {column!r} two modalities: "
                f"{FIELD_OF[columns[column]]} and {FIELD_OF[modality]}"
            )
        columns[column] = modality
    return columns


def _has_scheme(path: str) -> bool:
    return bool(_SCHEME.match(path))


def _absolute(path: str) -> str:
    """Local paths made absolute, so every worker and report means the same file."""
    return path if _has_scheme(path) else os.path.abspath(path)


def _dirname(path: str) -> str:
    if _has_scheme(path):
        return path.rsplit("/", 1)[0]
    return os.path.dirname(path)


@dataclass(frozen=True)
class InputSpec:
    """What to ingest: a directory or a manifest, and how to read a manifest's columns."""

    path: str
    id_column: str = "id"
    modality_columns: dict[str, Modality] = field(default_factory=dict)  # column → modality

    def __post_init__(self):
        # Accept modality names ("image", "vision") as well as members.
        columns = {c: m if isinstance(m, Modality) else _modality_named(m)
                   for c, m in (self.modality_columns or {}).items()}  # fmt: skip
        object.__setattr__(self, "modality_columns", columns)

    @property
    def kind(self) -> str:
        """``directory``, ``parquet``, ``csv`` or ``jsonl``, from the path alone."""
        path = self.path
        if path.endswith("/") or (not _has_scheme(path) and os.path.isdir(path)):
            return "directory"
        name = path.rsplit("/", 1)[-1].lower()
        stem = next((name[: -len(s)] for s in _COMPRESSED if name.endswith(s)), name)
        for suffix, kind in _MANIFEST_KINDS.items():
            if stem.endswith(suffix) and (kind != "parquet" or stem == name):
                return kind
        if _has_scheme(path) and "." not in name:
            return "directory"  # a bucket prefix
        raise ValueError(
            f"{path!r} is neither a directory nor a manifest: expected a directory or a "
            f"file ending in .parquet/.pq, .csv or .jsonl/.ndjson (CSV and JSONL may be "
            f"compressed: .gz, .bz2, .zst, ...)"
        )


# -- planning: what the collection needs, from headers only -------------------------------------


def _first_file(pattern: str) -> str:
    matches = FileSystems.match([pattern])[0].metadata_list
    if not matches:
        raise ValueError(f"no manifest matches {pattern!r}")
    return min(m.path for m in matches)


def _lines(path: str) -> Iterator[bytes]:
    """The file's lines as bytes, decompressing by extension; any filesystem Beam reads."""
    f = FileSystems.open(path, compression_type=CompressionTypes.AUTO)
    try:
        while line := f.readline():
            yield line
    finally:
        f.close()


def _csv_text(path: str) -> Iterator[str]:
    for number, line in enumerate(_lines(path), 1):
        try:
            yield line.decode("utf-8-sig" if number == 1 else "utf-8")
        except UnicodeDecodeError as err:
            raise ValueError(f"{path}: line {number} is not UTF-8 ({err})") from None


def _csv_reader(path: str):
    csv.field_size_limit(_CSV_FIELD_LIMIT)
    return csv.reader(_csv_text(path))


@contextmanager
def _parquet_file(path: str) -> Iterator[pq.ParquetFile]:
    with (
        FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f,
        pq.ParquetFile(f) as parquet,
    ):
        yield parquet


def _manifest_columns(path: str, kind: str) -> list[str]:
    first = _first_file(_absolute(path))
    if kind == "parquet":
        with _parquet_file(first) as parquet:
            return list(parquet.schema_arrow.names)
    if kind == "csv":
        header = next(_csv_reader(first), None)
        return [name.strip() for name in header or []]
    columns: dict[str, None] = {}  # JSONL: keys of the first lines, in first-seen order
    sampled = 0
    for line in _lines(first):
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict):
            columns.update(dict.fromkeys(row))
            sampled += 1
            if sampled >= _JSONL_SAMPLE_LINES:
                break
    return list(columns)


def _plan(spec: InputSpec) -> tuple[dict[str, Modality], list[str]]:
    columns = _manifest_columns(spec.path, spec.kind)
    listed = ", ".join(columns) or "none"
    if spec.id_column not in columns:
        raise ValueError(
            f"{spec.path} has no {spec.id_column!r} column (columns: {listed}); "
            f"name the id column with --id-column"
        )
    if spec.id_column in spec.modality_columns:
        raise ValueError(f"column {spec.id_column!r} cannot be both the id and a media column")
    missing = [c for c in spec.modality_columns if c not in columns]
    if missing:
        raise ValueError(
            f"--modality-columns names column(s) {', '.join(missing)} that {spec.path} "
            f"lacks (columns: {listed})"
        )
    media: dict[str, Modality] = {}
    metadata: list[str] = []
    for column in columns:
        if column == spec.id_column:
            continue
        modality = modality_of_column(column, spec.modality_columns)
        if modality is None:
            metadata.append(column)
        else:
            media[column] = modality
    if not media:
        raise ValueError(
            f"{spec.path} has no media or text column (columns: {listed}): name columns "
            f"after a modality ({', '.join(FIELD_OF.values())}, or e.g. image_front) or "
            f"map them with --modality-columns"
        )
    return media, metadata


def plan_fields(spec: InputSpec) -> dict[str, Modality]:
    """The media/text properties ``spec`` can fill, known before the pipeline runs.

    A directory may hold any modality, and listing millions of files to find
    out is not cheap, so it plans all seven. A manifest plans its media
    columns from the header alone (JSONL: the keys of its first 1000 lines).
    """
    if spec.kind == "directory":
        return {name: modality for modality, name in FIELD_OF.items()}
    return _plan(spec)[0]


def metadata_columns(spec: InputSpec) -> list[str]:
    """The manifest columns copied as metadata properties: neither the id nor media."""
    if spec.kind == "directory":
        return []
    return _plan(spec)[1]


# -- files and rows to objects (pure, testable without Beam) ------------------------------------


def _modality_of_path(relpath: str) -> Modality | None:
    parts = relpath.split("/")
    if len(parts) > 1 and parts[0] in _MODALITY_NAMED:
        return _MODALITY_NAMED[parts[0]]
    _, dot, extension = parts[-1].rpartition(".")
    return _EXTENSIONS.get("." + extension.lower()) if dot else None


def _relpath(path: str, root: str) -> str:
    """``path`` relative to ``root``, with POSIX separators (the object's id)."""
    prefix = root.rstrip("/\\")
    relpath = path[len(prefix) :]
    if not path.startswith(prefix) or not relpath.startswith(("/", os.sep)):
        raise ValueError(f"{path!r} is not under {root!r}")
    relpath = relpath.lstrip("/\\")
    return relpath if _has_scheme(path) else relpath.replace(os.sep, "/")


def file_to_object(path: str, root: str) -> SourceObject | None:
    """The object file ``path`` under ``root`` becomes; None for hidden files.

    Raises ValueError when neither its folder nor its extension names a modality.
    """
    relpath = _relpath(path, root)
    if not relpath or relpath.endswith("/"):  # an object store's folder marker
        return None
    if any(part.startswith(".") for part in relpath.split("/")):
        return None
    modality = _modality_of_path(relpath)
    if modality is None:
        raise ValueError(
            f"cannot tell the modality of {relpath!r} from its folder or extension; put it "
            f"under {', '.join(n + '/' for n in FIELD_OF.values())} or use a manifest"
        )
    return SourceObject(relpath, path, {FIELD_OF[modality]: FieldValue(modality, uri=path)})


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _row_id(row: Mapping[str, Any], id_column: str) -> str | None:
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


def _decode_base64(payload: str, column: str) -> bytes:
    try:
        return base64.b64decode("".join(payload.split()), validate=True)
    except binascii.Error as err:
        raise ValueError(f"column {column!r}: bad base64 ({err})") from None


def _inline_bytes(value: str, column: str) -> bytes | None:
    """The bytes a ``base64:`` string or data URI holds; None for a path/URI."""
    if value.startswith("base64:"):
        return _decode_base64(value[len("base64:") :], column)
    if value.startswith("data:"):
        header, comma, payload = value[len("data:") :].partition(",")
        if not comma:
            raise ValueError(f"column {column!r}: a data URI needs a ',' before its data")
        if header.endswith(";base64"):
            return _decode_base64(payload, column)
        return urllib.parse.unquote_to_bytes(payload)
    return None


def _resolve(uri: str, manifest_dir: str) -> str:
    if _has_scheme(uri) or os.path.isabs(uri):
        return uri
    if _has_scheme(manifest_dir):
        return f"{manifest_dir.rstrip('/')}/{uri}"
    return os.path.normpath(os.path.join(manifest_dir, uri))


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
    data = _inline_bytes(value, column)
    if data is not None:
        return FieldValue(modality, data=data) if data else None
    return FieldValue(modality, uri=_resolve(value, manifest_dir))


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
    source_id = _row_id(row, spec.id_column)
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


# -- Beam ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Row:
    """A manifest row on its way to becoming an object."""

    label: str  # "path:row N" / "path:line N"
    manifest_dir: str  # where relative paths in the row resolve
    data: Any  # a dict (Parquet, CSV), the raw line (JSONL), or a reason it is unreadable


@dataclass(frozen=True)
class _Unreadable:
    reason: str
    source_id: str = ""


class _ToObjects(beam.DoFn):
    """Base: counts what it emits, tags failures."""

    def __init__(self):
        self._read = Metrics.counter(METRICS_NAMESPACE, "read")
        self._failed = Metrics.counter(METRICS_NAMESPACE, "read_failed")

    def _ok(self, obj: SourceObject) -> SourceObject:
        self._read.inc()
        return obj

    def _fail(self, id_: str, source: str, error: str) -> beam.pvalue.TaggedOutput:
        self._failed.inc()
        return beam.pvalue.TaggedOutput(FAILURES, Failure(id_, source, STAGE, error))


class _FilesToObjects(_ToObjects):
    def __init__(self, root: str):
        super().__init__()
        self._root = root

    def process(self, file: FileMetadata) -> Iterator[SourceObject | beam.pvalue.TaggedOutput]:
        try:
            obj = file_to_object(file.path, self._root)
        except ValueError as err:
            try:
                relpath = _relpath(file.path, self._root)
            except ValueError:
                relpath = file.path
            yield self._fail(relpath, file.path, str(err))
            return
        if obj is not None:
            yield self._ok(obj)


class _RowsToObjects(_ToObjects):
    def __init__(self, spec: InputSpec):
        super().__init__()
        self._spec = spec

    def process(self, row: _Row) -> Iterator[SourceObject | beam.pvalue.TaggedOutput]:
        data = row.data
        try:
            if isinstance(data, _Unreadable):
                yield self._fail(data.source_id, row.label, data.reason)
                return
            if isinstance(data, bytes):  # a JSONL line
                try:
                    data = json.loads(data)
                except ValueError as err:
                    text = data.decode("utf-8", "replace").strip()
                    raise ValueError(f"not JSON ({err}): {text[:80]!r}") from None
                if not isinstance(data, dict):
                    raise ValueError(f"expected a JSON object, got {type(data).__name__}")
            yield self._ok(row_to_object(data, self._spec, row.manifest_dir, row.label))
        except ValueError as err:
            source_id = _row_id(data, self._spec.id_column) if isinstance(data, Mapping) else None
            yield self._fail(source_id or "", row.label, str(err))


class _ParquetRowGroups(beam.DoFn):
    """Splits a Parquet file into its row groups, numbering their first rows."""

    def process(self, file: FileMetadata) -> Iterator[tuple[str, int, int]]:
        with _parquet_file(file.path) as parquet:
            metadata = parquet.metadata
        first = 0
        for group in range(metadata.num_row_groups):
            yield file.path, group, first
            first += metadata.row_group(group).num_rows


class _ReadParquetRowGroup(beam.DoFn):
    def process(self, element: tuple[str, int, int]) -> Iterator[_Row]:
        path, group, number = element
        manifest_dir = _dirname(path)
        with _parquet_file(path) as parquet:
            batches = parquet.iter_batches(batch_size=_PARQUET_BATCH_ROWS, row_groups=[group])
            for batch in batches:
                for data in batch.to_pylist():
                    yield _Row(f"{path}:row {number}", manifest_dir, data)
                    number += 1


class _ReadCsvRows(beam.DoFn):
    """One file's records, read in order so quoted cells may span lines."""

    def __init__(self, id_column: str):
        super().__init__()
        self._id_column = id_column

    def process(self, file: FileMetadata) -> Iterator[_Row]:
        manifest_dir = _dirname(file.path)
        reader = _csv_reader(file.path)
        header = [name.strip() for name in next(reader, None) or []]
        id_at = header.index(self._id_column) if self._id_column in header else len(header)
        start = reader.line_num + 1
        for cells in reader:
            label, start = f"{file.path}:line {start}", reader.line_num + 1
            if not any(cells):
                continue  # a blank line
            if len(cells) != len(header):
                reason = f"{len(cells)} cells where the header has {len(header)}"
                source_id = cells[id_at] if id_at < len(cells) else ""
                yield _Row(label, manifest_dir, _Unreadable(reason, source_id))
                continue
            data = {
                name: cell if cell != "" else None for name, cell in zip(header, cells, strict=True)
            }
            yield _Row(label, manifest_dir, data)


class _ReadJsonLines(beam.DoFn):
    """One file's lines, numbered; parsing waits for the reshuffle, where it runs in parallel."""

    def process(self, file: FileMetadata) -> Iterator[_Row]:
        manifest_dir = _dirname(file.path)
        for number, line in enumerate(_lines(file.path), 1):
            if line.strip():
                yield _Row(f"{file.path}:line {number}", manifest_dir, line)


class ReadObjects(beam.PTransform):
    """Reads a directory or manifest into ``SourceObject``s.

    The result has two outputs: ``objects`` and ``failures`` (``Failure``s of
    stage ``read``)::

        read = pipeline | ReadObjects(InputSpec("gs://bucket/dataset"))
        read.objects, read.failures

    Files are listed, and manifests read, by one worker each; a reshuffle then
    spreads the objects so that decoding and embedding run in parallel.
    Parquet files are read a row group at a time, in parallel.
    """

    def __init__(self, spec: InputSpec):
        super().__init__()
        spec.kind  # noqa: B018 - fail at construction on a path we cannot read
        self._spec = spec

    def expand(self, pbegin: beam.pvalue.PBegin) -> beam.pvalue.DoOutputsTuple:
        spec = self._spec
        kind = spec.kind
        if kind == "directory":
            root = _absolute(spec.path).rstrip("/")
            candidates = (
                pbegin
                | "MatchFiles" >> fileio.MatchFiles(f"{root}/**")
                | "Reshuffle" >> beam.Reshuffle()
            )
            to_objects: _ToObjects = _FilesToObjects(root)
        else:
            files = pbegin | "MatchFiles" >> fileio.MatchFiles(_absolute(spec.path))
            if kind == "parquet":
                rows = (
                    files
                    | "RowGroups" >> beam.ParDo(_ParquetRowGroups())
                    | "ReshuffleRowGroups" >> beam.Reshuffle()
                    | "ReadRowGroups" >> beam.ParDo(_ReadParquetRowGroup())
                )
            elif kind == "csv":
                rows = files | "ReadCsv" >> beam.ParDo(_ReadCsvRows(spec.id_column))
            else:
                rows = files | "ReadLines" >> beam.ParDo(_ReadJsonLines())
            candidates = rows | "Reshuffle" >> beam.Reshuffle()
            to_objects = _RowsToObjects(spec)
        return candidates | "ToObjects" >> beam.ParDo(to_objects).with_outputs(
            FAILURES, main=OBJECTS
        )
