"""Which stored URIs the search page sends: only media inside the collection's media roots.

Anyone who can write objects to a collection can store any ``<field>_uri``, so
a URI alone never decides what the page sends. The roots are the folders
ib-ingest read the collection from (recorded in the collection's schema, see
:func:`pipelines.schema.recorded_media_roots`, which object writes cannot
change) and those given with ``ib-search --media-root`` (folders, or http(s)
URL prefixes to redirect to).

A local URI is resolved (symlinks and ``..``) before it is checked, then opened
one path component at a time from its root without following links, so the
file checked is the file read even if the tree changes meanwhile. Only
regular files are sent (never /proc, /sys, /dev, pipes or devices), and only
when their bytes are a type the page shows (:data:`detect.MEDIA_TYPES`).
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import BinaryIO
from urllib.parse import unquote, urlsplit

from ..paths import has_scheme
from .detect import SNIFF_BYTES, content_type
from .errors import ApiError

PSEUDO_FILESYSTEMS = ("/proc", "/sys", "/dev")  # regular files there are views of the system
DEFAULT_PORTS = {"http": 80, "https": 443}
SHOWN_MEDIA = "an image, audio, video or IMU (CSV or .npy) file, told from its bytes"


@dataclass(frozen=True)
class UrlPrefix:
    """An http(s) URL prefix media may be redirected to: scheme, host, port and a path ending /."""

    scheme: str
    host: str
    port: int
    path: str

    @classmethod
    def parse(cls, text: str) -> UrlPrefix:
        """Raises ValueError when ``text`` is not a plain ``http(s)://HOST[:PORT]/PATH``."""
        parts = _web_parts(text)
        if parts is None or urlsplit(text).query or urlsplit(text).fragment:
            raise ValueError("not an http(s)://HOST[:PORT]/PATH/ prefix (no user, query, fragment)")
        scheme, host, port, path = parts
        return cls(scheme, host, port, path if path.endswith("/") else path + "/")

    @property
    def origin(self) -> str:
        """``scheme://host[:port]``, as a Content-Security-Policy source."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        port = "" if self.port == DEFAULT_PORTS[self.scheme] else f":{self.port}"
        return f"{self.scheme}://{host}{port}"

    def holds(self, parts: tuple[str, str, int, str]) -> bool:
        scheme, host, port, path = parts
        same_server = (scheme, host, port) == (self.scheme, self.host, self.port)
        return same_server and path.startswith(self.path)

    def __str__(self) -> str:
        return self.origin + self.path


@dataclass(frozen=True)
class MediaRoots:
    """Folders (real paths) whose files may be sent, and URL prefixes that may be redirected to."""

    folders: tuple[str, ...] = ()
    url_prefixes: tuple[UrlPrefix, ...] = ()

    @classmethod
    def from_flags(cls, values: Iterable[str]) -> MediaRoots:
        """``--media-root`` values; ValueError naming the value and what is wrong with it."""
        folders, prefixes = [], []
        for value in values:
            if value.lower().startswith(tuple(f"{s}://" for s in DEFAULT_PORTS)):
                try:
                    prefixes.append(UrlPrefix.parse(value))
                except ValueError as err:
                    raise ValueError(f"--media-root {value}: {err}") from None
                continue
            path = _local_path(value)
            if path is None or not os.path.isdir(path):
                raise ValueError(f"--media-root {value}: no such folder (give a folder or a URL)")
            folders.append(os.path.realpath(path))
        return cls(tuple(folders), tuple(prefixes))

    @classmethod
    def from_recorded(cls, recorded: Iterable[str]) -> MediaRoots:
        """The local folders among a collection's recorded roots (a gs:// one is never served)."""
        paths = (_local_path(root) for root in recorded)
        return cls(tuple(os.path.realpath(p) for p in paths if p and os.path.isabs(p)))

    def __or__(self, other: MediaRoots) -> MediaRoots:
        return MediaRoots(
            tuple(dict.fromkeys(self.folders + other.folders)),
            tuple(dict.fromkeys(self.url_prefixes + other.url_prefixes)),
        )

    def folder_holding(self, real_path: str) -> str | None:
        """The root ``real_path`` lies strictly inside, or None."""
        for folder in self.folders:
            if real_path != folder and os.path.commonpath([folder, real_path]) == folder:
                return folder
        return None

    def __str__(self) -> str:
        shown = [*self.folders, *map(str, self.url_prefixes)]
        return ", ".join(shown) if shown else "none"


@dataclass
class MediaFile:
    """A stored file checked and opened for sending: a regular file of a type the page shows."""

    fd: int
    size: int
    content_type: str

    def read_at(self, offset: int, count: int) -> bytes:
        return os.pread(self.fd, count, offset)

    def reader(self) -> BinaryIO:
        """A file object over the same open file (for Pillow); closing it leaves ``fd`` open."""
        return open(self.fd, "rb", closefd=False)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> MediaFile:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


def is_web_url(uri: str) -> bool:
    return urlsplit(uri).scheme.lower() in DEFAULT_PORTS


def allowed_url(uri: str, roots: MediaRoots, what: str) -> str:
    """``uri`` when it is under a ``--media-root`` URL prefix; else ApiError 403 saying which."""
    parts = _web_parts(uri)
    if parts is None:
        raise ApiError(403, f"{what}: {uri} is not a plain http(s) URL; it is not redirected to")
    if any(prefix.holds(parts) for prefix in roots.url_prefixes):
        return uri
    scheme, host, port, path = parts
    suggested = UrlPrefix(scheme, host, port, path.rsplit("/", 1)[0] + "/")
    raise ApiError(
        403,
        f"{what}: {uri} is under no media root ({roots}): if the collection's media live "
        f"there, start ib-search with --media-root {suggested}",
    )


def open_media_file(uri: str, roots: MediaRoots, what: str) -> MediaFile:
    """The local file ``uri`` names, opened, when it is inside ``roots``; else ApiError.

    403 outside the roots or not a regular file, 404 when it is gone, 415 when
    its bytes are not a media type the page shows. ``what`` names the stored
    URI in messages (``image_uri of object ID``).
    """
    path = _local_path(uri)
    if path is None:
        raise ApiError(403, f"{what}: ib-search sends local files and http(s) URLs, not {uri}")
    if not os.path.isabs(path):
        raise ApiError(403, f"{what}: {uri} is not an absolute path; it is not sent")
    real = os.path.realpath(path)
    shown = uri if real == os.path.normpath(path) else f"{uri} (which resolves to {real})"
    if any(real == top or real.startswith(top + "/") for top in PSEUDO_FILESYSTEMS):
        raise ApiError(403, f"{what}: {shown} is a system file (/proc, /sys, /dev); never sent")
    root = roots.folder_holding(real)
    if root is None:
        raise ApiError(
            403,
            f"{what}: {shown} is outside the media roots ({roots}): if the collection's media "
            f"live there, start ib-search with --media-root {os.path.dirname(real)}",
        )
    try:
        fd = _open_beneath(root, os.path.relpath(real, root).split(os.sep))
    except FileNotFoundError:
        raise ApiError(404, f"{what}: the stored file {uri} is not there any more") from None
    except PermissionError:
        raise ApiError(403, f"{what}: ib-search may not read {uri} (permission denied)") from None
    except OSError as err:
        if err.errno in (errno.ELOOP, errno.ENOTDIR):
            raise ApiError(403, f"{what}: a link appeared on the path of {uri}; not sent") from None
        raise
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ApiError(403, f"{what}: {shown} is not a regular file (a pipe, device or folder)")
        kind = content_type(os.pread(fd, SNIFF_BYTES, 0))
        if kind is None:
            raise ApiError(415, f"{what}: {shown} is not media the page shows ({SHOWN_MEDIA})")
        return MediaFile(fd, info.st_size, kind)
    except BaseException:
        os.close(fd)
        raise


def _open_beneath(root: str, parts: Sequence[str]) -> int:
    """Open ``root/parts...`` for reading, following no link on the way (OSError if one is).

    A pipe opens without blocking, so it is refused instead of hanging a thread.
    """
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for part in parts[:-1]:
            inner = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            os.close(fd)
            fd = inner
        return os.open(parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=fd)
    finally:
        os.close(fd)


def _local_path(uri: str) -> str | None:
    """The path a local URI (a path or ``file://``) names; None for other schemes."""
    if uri.startswith("file://"):
        parts = urlsplit(uri)
        return unquote(parts.path) if parts.netloc in ("", "localhost") else None
    return None if has_scheme(uri) else uri


def _web_parts(uri: str) -> tuple[str, str, int, str] | None:
    """(scheme, host, port, path) of a plain http(s) URL; None for anything a browser could
    read differently from us: user info, backslashes, control characters, dot segments."""
    if any(c.isspace() or c == "\\" or ord(c) < 0x20 or ord(c) == 0x7F for c in uri):
        return None
    parts = urlsplit(uri)
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS or "@" in parts.netloc or not parts.hostname:
        return None
    try:
        port = parts.port or DEFAULT_PORTS[scheme]
    except ValueError:
        return None
    if any(segment in (".", "..") for segment in unquote(parts.path).split("/")):
        return None
    return scheme, parts.hostname.lower(), port, parts.path or "/"
