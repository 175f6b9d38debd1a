"""Local paths and URIs, told apart and combined the same way everywhere in the pipelines.

A path with a scheme (``gs://``, ``s3://``, ``file://``) is left to Beam's
FileSystems and handled as text with ``/`` separators; any other path is a
local one, handled with ``os.path``.
"""

from __future__ import annotations

import os
import re

_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def has_scheme(path: str | None) -> bool:
    """Whether ``path`` is a URI with a scheme (``gs://...``); False for None or empty."""
    return bool(path) and bool(_SCHEME.match(path))


def absolute(path: str) -> str:
    """Local paths made absolute, so every worker and report means the same file."""
    return path if has_scheme(path) else os.path.abspath(path)


def dirname(path: str) -> str:
    """The folder holding ``path``: a URI prefix or a local directory."""
    if has_scheme(path):
        return path.rsplit("/", 1)[0]
    return os.path.dirname(path)


def resolve(uri: str, manifest_dir: str) -> str:
    """A path from a manifest: relative ones resolve against the manifest's folder.

    Absolute paths and URIs with a scheme are kept as they are.
    """
    if has_scheme(uri) or os.path.isabs(uri):
        return uri
    if has_scheme(manifest_dir):
        return f"{manifest_dir.rstrip('/')}/{uri}"
    return os.path.normpath(os.path.join(manifest_dir, uri))


def relpath(path: str, root: str) -> str:
    """``path`` relative to ``root``, with POSIX separators (a directory object's id).

    Raises ValueError when ``path`` is not under ``root``.
    """
    prefix = root.rstrip("/\\")
    relative = path[len(prefix) :]
    if not path.startswith(prefix) or not relative.startswith(("/", os.sep)):
        raise ValueError(f"{path!r} is not under {root!r}")
    relative = relative.lstrip("/\\")
    return relative if has_scheme(path) else relative.replace(os.sep, "/")


def local_copy(uri: str) -> str:
    """Copy a checkpoint from any Beam FileSystem (gs://, s3://, ...) to this worker once."""
    import shutil
    import tempfile
    from pathlib import Path

    from apache_beam.io.filesystems import FileSystems

    target = Path(tempfile.gettempdir()) / "ib_vectorizer" / Path(uri).name
    if target.exists():
        return str(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f"{target.name}.{os.getpid()}.part")
    with FileSystems.open(uri) as source, partial.open("wb") as sink:
        shutil.copyfileobj(source, sink, length=16 << 20)
    os.replace(partial, target)
    return str(target)
