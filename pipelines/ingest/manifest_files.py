"""Opening manifest files on any filesystem Beam reads, for their headers and their rows.

Planning reads only the columns (:func:`manifest_columns`); the Beam reader in
``reader`` reads the rows through the same functions, so both see a file the
same way. CSV is read line by line with the ``csv`` module, so quoted cells
may span lines. Text manifests may be compressed (``.gz``, ``.bz2``,
``.zst``, ...); the extension says how.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from contextlib import contextmanager

import pyarrow.parquet as pq
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from ..paths import absolute

_JSONL_SAMPLE_LINES = 1000  # lines whose keys plan a JSONL manifest's columns
_CSV_FIELD_LIMIT = 2**31 - 1  # inline base64 media outgrow csv's 128 KiB default


def first_file(pattern: str) -> str:
    """The first file (by name) that ``pattern`` matches; ValueError when none does."""
    matches = FileSystems.match([pattern])[0].metadata_list
    if not matches:
        raise ValueError(f"no manifest matches {pattern!r}")
    return min(m.path for m in matches)


def lines(path: str) -> Iterator[bytes]:
    """The file's lines as bytes, decompressing by extension; any filesystem Beam reads."""
    f = FileSystems.open(path, compression_type=CompressionTypes.AUTO)
    try:
        while line := f.readline():
            yield line
    finally:
        f.close()


def _csv_text(path: str) -> Iterator[str]:
    for number, line in enumerate(lines(path), 1):
        try:
            yield line.decode("utf-8-sig" if number == 1 else "utf-8")
        except UnicodeDecodeError as err:
            raise ValueError(f"{path}: line {number} is not UTF-8 ({err})") from None


def csv_reader(path: str):
    """A ``csv.reader`` over the file, its cells strings; a leading BOM is dropped."""
    csv.field_size_limit(_CSV_FIELD_LIMIT)
    return csv.reader(_csv_text(path))


@contextmanager
def parquet_file(path: str) -> Iterator[pq.ParquetFile]:
    """The Parquet file at ``path``, open for reading its metadata and row groups."""
    with (
        FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f,
        pq.ParquetFile(f) as parquet,
    ):
        yield parquet


def manifest_columns(path: str, kind: str) -> list[str]:
    """The column names of the first file ``path`` matches, from its header alone.

    ``kind`` is ``parquet``, ``csv`` or ``jsonl``. A JSONL file has no header:
    its columns are the keys of its first 1000 objects, in first-seen order.
    """
    first = first_file(absolute(path))
    if kind == "parquet":
        with parquet_file(first) as parquet:
            return list(parquet.schema_arrow.names)
    if kind == "csv":
        header = next(csv_reader(first), None)
        return [name.strip() for name in header or []]
    columns: dict[str, None] = {}
    sampled = 0
    for line in lines(first):
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
