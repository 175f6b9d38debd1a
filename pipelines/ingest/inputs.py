"""What ``ib-ingest`` is asked to read, and the properties it will fill, known up front.

An :class:`InputSpec` names a directory tree or a manifest (Parquet, CSV or
JSONL). A manifest holds one object per row: an id column, media columns
(paths/URIs or inline bytes), text columns, and metadata columns copied as
properties. A column holds a modality when it is named after it (``image``,
``text``) or starts with that name and ``_`` (``image_front``,
``text_caption``), or when ``--modality-columns`` says so.

The collection is created before the pipeline runs, so its properties are
planned here from the manifest's header alone (:func:`plan_fields`,
:func:`metadata_columns`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from ib_vectorizer.modalities import Modality

from ..paths import has_scheme
from .manifest_files import manifest_columns

_BY_LABEL = {modality.label: modality for modality in Modality}  # column prefixes
_MANIFEST_KINDS = {
    ".parquet": "parquet",
    ".pq": "parquet",
    ".csv": "csv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
}
_COMPRESSED = (".gz", ".bz2", ".deflate", ".zst", ".zstd", ".xz", ".lzma")


def modality_of_column(
    name: str, overrides: Mapping[str, Modality] | None = None
) -> Modality | None:
    """The modality a manifest column holds, or None for a metadata column."""
    if overrides and name in overrides:
        return overrides[name]
    prefix = name.split("_", 1)[0]
    return _BY_LABEL.get(prefix)


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
            modality = Modality.parse(name)
        except ValueError as err:
            raise ValueError(f"--modality-columns: {err}") from None
        if columns.get(column, modality) is not modality:
            raise ValueError(
                f"--modality-columns gives column {column!r} two modalities: "
                f"{columns[column].label} and {modality.label}"
            )
        columns[column] = modality
    return columns


@dataclass(frozen=True)
class InputSpec:
    """What to ingest: a directory or a manifest, and how to read a manifest's columns."""

    path: str
    id_column: str = "id"
    modality_columns: dict[str, Modality] = field(default_factory=dict)  # column → modality

    def __post_init__(self):
        # Accept modality names ("image", "vision") as well as members.
        columns = {
            column: modality if isinstance(modality, Modality) else Modality.parse(modality)
            for column, modality in (self.modality_columns or {}).items()
        }
        object.__setattr__(self, "modality_columns", columns)

    @property
    def kind(self) -> str:
        """``directory``, ``parquet``, ``csv`` or ``jsonl``, from the path alone.

        A local path that is no manifest's name must exist (a directory, or a
        file that gets the error below); a manifest's may be a glob, checked
        when its header is read.
        """
        path = self.path
        if not has_scheme(path) and os.path.isdir(path):
            return "directory"
        if path.endswith("/"):
            if not has_scheme(path):
                raise _missing(path)
            return "directory"
        name = path.rsplit("/", 1)[-1].lower()
        stem = next((name[: -len(s)] for s in _COMPRESSED if name.endswith(s)), name)
        for suffix, kind in _MANIFEST_KINDS.items():
            if stem.endswith(suffix) and (kind != "parquet" or stem == name):
                return kind
        if has_scheme(path) and "." not in name:
            return "directory"  # a bucket prefix
        if not has_scheme(path) and not os.path.exists(path):
            raise _missing(path)
        raise ValueError(
            f"{path!r} is neither a directory nor a manifest: expected a directory or a "
            f"file ending in .parquet/.pq, .csv or .jsonl/.ndjson (CSV and JSONL may be "
            f"compressed: .gz, .bz2, .zst, ...)"
        )


def _missing(path: str) -> ValueError:
    return ValueError(f"--input {path} does not exist")


def _plan(spec: InputSpec) -> tuple[dict[str, Modality], list[str]]:
    kind = spec.kind
    local = not has_scheme(spec.path) and not any(c in spec.path for c in "*?[")  # not a glob
    if local and not os.path.exists(spec.path):
        raise _missing(spec.path)
    columns = manifest_columns(spec.path, kind)
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
            f"after a modality ({', '.join(_BY_LABEL)}, or e.g. image_front) or "
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
        return dict(_BY_LABEL)
    return _plan(spec)[0]


def metadata_columns(spec: InputSpec) -> list[str]:
    """The manifest columns copied as metadata properties: neither the id nor media."""
    if spec.kind == "directory":
        return []
    return _plan(spec)[1]
