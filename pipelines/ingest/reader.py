"""Where ``ib-ingest`` gets its objects: a directory tree or a manifest, read by Beam.

:class:`ReadObjects` lists a directory (one object per file) or reads a
manifest (Parquet, CSV or JSONL: one object per row) and emits
``SourceObject``s (:mod:`.elements`). The rest lives beside it: ``inputs`` (``InputSpec``, which
column holds what, the plan from headers), ``to_objects`` (one file or row
into one object), ``manifest_files`` (opening manifests on any filesystem)
and ``paths`` (local paths and URIs).

CSV values stay strings (CSV carries no types) and an empty cell reads as
``None``. What cannot be read (a vector image, a row without id or media, a
malformed line) becomes a ``Failure`` with stage ``read``, named
``path:row N`` (Parquet, counted from 0 like pyarrow) or ``path:line N``
(CSV/JSONL, counted from 1 like an editor). A directory's files that are not
media, or that an OS left behind, are skipped: counted (``skipped``) and
named by kind in the summary, not failed.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import apache_beam as beam
from apache_beam.io import fileio
from apache_beam.io.filesystem import FileMetadata

from ..beam.failures import FAILURES, Failure
from ..paths import absolute, dirname, relpath
from .elements import Skipped, SourceObject
from .inputs import InputSpec
from .manifest_files import csv_reader, lines, parquet_file
from .progress import JobCounter, SkippedKinds
from .to_objects import file_to_object, row_id, row_to_object

OBJECTS = "objects"
SKIPPED = "skipped"  # the ids of a directory's files that are no object (see to_objects.Skipped)
STAGE = "read"

_PARQUET_BATCH_ROWS = 256  # rows per decoded batch: inline media make rows large


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
        self._read = JobCounter("read")
        self._failed = JobCounter("read_failed")

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
        self._skipped = JobCounter("skipped")
        self._kinds = SkippedKinds()

    def process(self, file: FileMetadata) -> Iterator[SourceObject | beam.pvalue.TaggedOutput]:
        try:
            obj = file_to_object(file.path, self._root)
        except ValueError as err:
            try:
                source_id = relpath(file.path, self._root)
            except ValueError:
                source_id = file.path
            yield self._fail(source_id, file.path, str(err))
            return
        if isinstance(obj, Skipped):
            self._skipped.inc()
            self._kinds.add(obj.why, obj.kind, obj.source_id.rsplit("/", 1)[-1])
            yield beam.pvalue.TaggedOutput(SKIPPED, obj.source_id)
        elif obj is not None:
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
            source_id = row_id(data, self._spec.id_column) if isinstance(data, Mapping) else None
            yield self._fail(source_id or "", row.label, str(err))


class _ParquetRowGroups(beam.DoFn):
    """Splits a Parquet file into its row groups, numbering their first rows."""

    def process(self, file: FileMetadata) -> Iterator[tuple[str, int, int]]:
        with parquet_file(file.path) as parquet:
            metadata = parquet.metadata
        first = 0
        for group in range(metadata.num_row_groups):
            yield file.path, group, first
            first += metadata.row_group(group).num_rows


class _ReadParquetRowGroup(beam.DoFn):
    def process(self, element: tuple[str, int, int]) -> Iterator[_Row]:
        path, group, number = element
        manifest_dir = dirname(path)
        with parquet_file(path) as parquet:
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
        manifest_dir = dirname(file.path)
        reader = csv_reader(file.path)
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
        manifest_dir = dirname(file.path)
        for number, line in enumerate(lines(file.path), 1):
            if line.strip():
                yield _Row(f"{file.path}:line {number}", manifest_dir, line)


_LISTED = JobCounter("listed")


def _count_listed(item):
    """Counts what was listed before the reshuffle: the input's size, known before decoding."""
    _LISTED.inc()
    return item


class ReadObjects(beam.PTransform):
    """Reads a directory or manifest into ``SourceObject``s.

    The result has three outputs: ``objects``, ``failures`` (``Failure``s of
    stage ``read``) and ``skipped`` (the ids of a directory's files that are
    not media or an OS's own)::

        read = pipeline | ReadObjects(InputSpec("gs://bucket/dataset"))
        read.objects, read.failures, read.skipped

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
            root = absolute(spec.path).rstrip("/")
            candidates = (
                pbegin
                | "MatchFiles" >> fileio.MatchFiles(f"{root}/**")
                | "CountListed" >> beam.Map(_count_listed)
                | "Reshuffle" >> beam.Reshuffle()
            )
            to_objects: _ToObjects = _FilesToObjects(root)
        else:
            files = pbegin | "MatchFiles" >> fileio.MatchFiles(absolute(spec.path))
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
            candidates = (
                rows | "CountListed" >> beam.Map(_count_listed) | "Reshuffle" >> (beam.Reshuffle())
            )
            to_objects = _RowsToObjects(spec)
        return candidates | "ToObjects" >> beam.ParDo(to_objects).with_outputs(
            FAILURES, SKIPPED, main=OBJECTS
        )
