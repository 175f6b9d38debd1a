"""Where the ImageBind weights come from and how they get onto disk.

The checkpoint is about 4.5 GB, so fetching it must survive a dropped connection
without starting over: :func:`download` writes to ``<dest>.part``, resumes that
file with an HTTP ``Range`` request, and only moves it to ``dest`` (atomically)
once it is complete. Everything else here is small: a registry of known weights
kept as data, the default location on disk, and a check that turns "file not
found" into a message saying exactly what to run.

Only the standard library (``urllib``) is used for HTTP, so a server image needs
no extra dependency just to fetch its weights.
"""

from __future__ import annotations

import contextlib
import http.client
import logging
import os
import re
import sys
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from tqdm import tqdm

from .retry import Backoff, call_with_retries

__all__ = [
    "DEFAULT_WEIGHTS",
    "WEIGHTS",
    "CheckpointError",
    "WeightSpec",
    "default_checkpoint_path",
    "download",
    "ensure_downloaded",
    "resolve_checkpoint",
]

log = logging.getLogger(__name__)

#: Seconds before the first retry; doubled for each further one (capped below).
#: Module-level so tests can set it to 0.
_BACKOFF_BASE_S = 1.0
_BACKOFF_MAX_S = 30.0
_USER_AGENT = "ib-vectorizer (urllib)"
_WHAT_TO_DO = (
    "Check the network, or fetch the file by other means and pass --checkpoint PATH "
    "/ set IB_CHECKPOINT"
)


class CheckpointError(RuntimeError):
    """The checkpoint is missing or could not be fetched; the message says what to do."""


@dataclass(frozen=True)
class WeightSpec:
    """One downloadable set of weights: where it lives and what it is.

    ``approx_bytes`` is for messages and disk-space hints only; the download is
    checked against the size the server announces. There is no checksum field
    because no published digest is known for these files.
    """

    name: str
    url: str
    filename: str
    approx_bytes: int
    licence: str


#: Known weights by name (the names the CLI and ``ensure_downloaded`` accept).
WEIGHTS: dict[str, WeightSpec] = {
    "imagebind_huge": WeightSpec(
        name="imagebind_huge",
        url="https://dl.fbaipublicfiles.com/imagebind/imagebind_huge.pth",
        filename="imagebind_huge.pth",
        approx_bytes=4_500_000_000,
        licence="CC-BY-NC-SA 4.0",
    ),
}

DEFAULT_WEIGHTS = "imagebind_huge"


def _spec(name: str) -> WeightSpec:
    """Look ``name`` up in :data:`WEIGHTS`, failing with the list of known names."""
    try:
        return WEIGHTS[name]
    except KeyError:
        known = ", ".join(sorted(WEIGHTS))
        raise CheckpointError(f"unknown weights {name!r}; known: {known}") from None


def _home(env: Mapping[str, str]) -> Path:
    """The user's home directory as ``env`` sees it (so tests need not touch HOME)."""
    home = env.get("HOME")
    return Path(home) if home else Path.home()


def _expand_user(path: str, env: Mapping[str, str]) -> Path:
    """``~`` expansion against ``env`` rather than the process environment."""
    if path == "~" or path.startswith("~/"):
        return _home(env) / path[2:]
    return Path(path).expanduser()


def default_checkpoint_path(
    name: str = DEFAULT_WEIGHTS, env: Mapping[str, str] | None = None
) -> Path:
    """Where the checkpoint is looked for (and downloaded to) when no path is given.

    ``$IB_CHECKPOINT`` wins so a container can point at a mounted volume;
    otherwise the per-user cache, ``$XDG_CACHE_HOME/ib_vectorizer/<filename>``
    (``~/.cache`` when unset or relative, as the XDG spec asks). Reads only
    ``env`` (default: ``os.environ``) and touches no file.
    """
    env = os.environ if env is None else env
    spec = _spec(name)
    explicit = env.get("IB_CHECKPOINT")
    if explicit:
        return _expand_user(explicit, env)
    xdg = env.get("XDG_CACHE_HOME")
    cache = Path(xdg) if xdg and os.path.isabs(xdg) else _home(env) / ".cache"
    return cache / "ib_vectorizer" / spec.filename


def resolve_checkpoint(path: str | Path | None, name: str = DEFAULT_WEIGHTS) -> Path:
    """Return the checkpoint file to load, or say precisely how to get one.

    ``path`` is what the user passed (``--checkpoint``); ``None`` means the
    default location. Never downloads: a server should not silently pull
    4.5 GB at start-up.
    """
    spec = _spec(name)
    given = path is not None
    target = Path(path).expanduser() if given else default_checkpoint_path(name)
    if target.is_file():
        return target
    if target.is_dir():
        problem = f"checkpoint path {target} is a directory, not a {spec.filename} file"
    else:
        problem = f"checkpoint {spec.filename} not found at {target}"
    size = f"~{spec.approx_bytes / 1e9:.1f} GB, licence {spec.licence}"
    if given:
        advice = (
            f"Run `ib-vectorizer download --output {target}` to fetch it there ({size}), "
            "or pass --checkpoint PATH / set IB_CHECKPOINT=PATH to an existing copy."
        )
    else:
        advice = (
            f"Run `ib-vectorizer download` to fetch it there ({size}), or "
            "`ib-vectorizer download --output PATH` and then pass --checkpoint PATH "
            "/ set IB_CHECKPOINT=PATH."
        )
    raise CheckpointError(f"{problem}. {advice}")


def ensure_downloaded(
    name: str = DEFAULT_WEIGHTS,
    dest: str | Path | None = None,
    url: str | None = None,
    progress: bool = True,
) -> Path:
    """Download the named weights unless already present; return their path.

    ``dest`` defaults to :func:`default_checkpoint_path`, ``url`` to the
    registry's (override it for a mirror).
    """
    spec = _spec(name)
    target = Path(dest).expanduser() if dest is not None else default_checkpoint_path(name)
    return download(url or spec.url, target, progress=progress)


# --------------------------------------------------------------------------- download


class _Retryable(Exception):
    """A transient failure (dropped connection, 5xx): resume and try again."""


class _Fatal(Exception):
    """A failure that retrying will not fix (404, bad local path)."""


def _fail(url: str, reason: object) -> CheckpointError:
    return CheckpointError(f"could not download {url}: {reason}. {_WHAT_TO_DO}.")


_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)", re.IGNORECASE)
_CONTENT_RANGE_UNSATISFIED = re.compile(r"bytes\s+\*/(\d+)", re.IGNORECASE)


def _size_on_disk(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _int_header(value: str | None) -> int | None:
    if value is None:
        return None
    try:
        return int(value.strip())
    except ValueError:
        return None


def _fsync_dir(directory: Path) -> None:
    """Make the rename durable; best effort (not every platform can open a directory)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        with contextlib.suppress(OSError):
            os.fsync(fd)
    finally:
        os.close(fd)


def _open_response(
    url: str, part: Path, have: int, timeout: float
) -> http.client.HTTPResponse | None:
    """Send the (ranged) request. ``None`` means the ``.part`` is already complete."""
    headers = {"User-Agent": _USER_AGENT, "Accept-Encoding": "identity"}
    if have:
        headers["Range"] = f"bytes={have}-"
    request = urllib.request.Request(url, headers=headers)
    try:
        return urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        with contextlib.closing(exc):
            if exc.code == 416 and have:
                # Our range starts at or past the end: the .part may be whole already.
                match = _CONTENT_RANGE_UNSATISFIED.search(exc.headers.get("Content-Range", ""))
                if match and int(match.group(1)) == have:
                    return None
                # The .part is longer than the file (or the size is unknown): start over.
                part.unlink(missing_ok=True)
                raise _Retryable(f"server refused to resume at byte {have} (HTTP 416)") from exc
            status = f"HTTP {exc.code} {exc.reason}"
            if exc.code >= 500 or exc.code in (408, 429):
                raise _Retryable(status) from exc
            raise _Fatal(status) from exc
    except (OSError, http.client.HTTPException) as exc:  # URLError, refused, timeout, ...
        reason = getattr(exc, "reason", None) or exc
        raise _Retryable(str(reason)) from exc


def _fetch_once(url: str, part: Path, chunk_bytes: int, timeout: float, bar: tqdm) -> int | None:
    """One request: append the missing bytes to ``part``; return the expected total size.

    Raises :class:`_Retryable` when the transfer stopped early (the bytes
    received so far stay in ``part`` for the next attempt).
    """
    have = _size_on_disk(part)
    response = _open_response(url, part, have, timeout)
    if response is None:
        log.info("%s is already complete (%d bytes)", part, have)
        return have
    with response:
        if response.status == 206:
            match = _CONTENT_RANGE.search(response.headers.get("Content-Range", ""))
            if match is None:
                raise _Retryable("server sent 206 without a usable Content-Range")
            start = int(match.group(1))
            total = None if match.group(3) == "*" else int(match.group(3))
            if start > have:
                part.unlink(missing_ok=True)
                raise _Retryable(f"server resumed at byte {start}, not {have}; restarting")
            offset = start
            log.info("resuming %s at byte %d", url, start)
        else:
            if have:
                log.info("server ignored the Range request; restarting %s from zero", url)
            offset = 0
            total = _int_header(response.headers.get("Content-Length"))
        if bar.total != total:
            bar.total = total
        bar.n = offset
        bar.refresh()

        try:
            fh: BinaryIO = open(part, "r+b" if part.exists() else "wb")  # noqa: SIM115
        except OSError as exc:
            raise _Fatal(f"cannot write {part}: {exc}") from exc
        with fh:
            try:
                fh.seek(offset)
                fh.truncate()
            except OSError as exc:
                raise _Fatal(f"cannot write {part}: {exc}") from exc
            while True:
                try:
                    chunk = response.read(chunk_bytes)
                except (OSError, http.client.HTTPException) as exc:
                    raise _Retryable(f"connection dropped: {exc!r}") from exc
                if not chunk:
                    break
                try:
                    fh.write(chunk)
                except OSError as exc:  # disk full, quota, ...
                    raise _Fatal(f"cannot write {part}: {exc}") from exc
                bar.update(len(chunk))
            try:
                fh.flush()
                os.fsync(fh.fileno())
            except OSError as exc:
                raise _Fatal(f"cannot write {part}: {exc}") from exc

    got = _size_on_disk(part)
    if total is not None and got < total:
        raise _Retryable(f"connection dropped after {got} of {total} bytes")
    if total is not None and got > total:
        part.unlink(missing_ok=True)
        raise _Retryable(f"received {got} bytes but the server announced {total}; restarting")
    return total


def download(
    url: str,
    dest: Path,
    *,
    progress: bool = True,
    chunk_bytes: int = 1 << 20,
    timeout: float = 60,
    retries: int = 3,
) -> Path:
    """Fetch ``url`` to ``dest``, resuming a previous partial download; return ``dest``.

    The bytes go to ``<dest>.part`` first and are renamed to ``dest`` only when
    complete (size checked against Content-Length/Content-Range when the
    server gives one), so ``dest`` existing means it is whole; that is why an
    existing ``dest`` returns at once without any request. A dropped
    connection or a 5xx is retried up to ``retries`` times, each attempt
    resuming where the last one stopped; a server that ignores ``Range`` (200)
    is fetched again from zero. The ``.part`` is kept on failure so the next
    call resumes. Two processes must not download to the same ``dest`` at once.

    Raises :class:`CheckpointError` saying what went wrong and what to do.
    """
    dest = Path(dest).expanduser()
    if dest.exists():
        log.debug("%s already present; not downloading", dest)
        return dest
    part = dest.with_name(dest.name + ".part")
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _fail(url, f"cannot create {dest.parent}: {exc}") from exc

    resumed = _size_on_disk(part)
    if resumed:
        log.info("downloading %s to %s, resuming at byte %d", url, dest, resumed)
    else:
        log.info("downloading %s to %s", url, dest)
    backoff = Backoff(attempts=retries + 1, base_s=_BACKOFF_BASE_S, max_s=_BACKOFF_MAX_S)
    with tqdm(
        desc=dest.name,
        initial=resumed,
        unit="B",
        unit_scale=True,
        file=sys.stderr,
        disable=not progress,
        dynamic_ncols=True,
    ) as bar:
        try:
            call_with_retries(
                lambda: _fetch_once(url, part, chunk_bytes, timeout, bar),
                retryable=lambda err: isinstance(err, _Retryable),
                backoff=backoff,
                what=f"download of {url}",
                log=log,
            )
        except _Fatal as exc:
            raise _fail(url, exc) from exc
        except _Retryable as exc:
            kept = _size_on_disk(part)
            kept_note = f"; {kept} bytes kept in {part}, rerun to resume" if kept else ""
            reason = f"{exc} (gave up after {backoff.attempts} attempts{kept_note})"
            raise _fail(url, reason) from exc

    try:
        os.replace(part, dest)
    except OSError as exc:
        raise _fail(url, f"cannot move {part} to {dest}: {exc}") from exc
    _fsync_dir(dest.parent)
    log.info("saved %s (%d bytes)", dest, dest.stat().st_size)
    return dest
