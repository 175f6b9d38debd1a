"""Checkpoint registry, default paths and the resumable downloader.

Downloads are served by a local HTTP server on 127.0.0.1 that honours (or, when
told to, ignores) ``Range: bytes=N-`` and can cut a response short to imitate a
dropped connection; it records every request so the tests can check what the
client asked for and how many bytes actually crossed the wire.
"""

from __future__ import annotations

import random
import re
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from ib_vectorizer import checkpoints
from ib_vectorizer.checkpoints import (
    WEIGHTS,
    CheckpointError,
    WeightSpec,
    default_checkpoint_path,
    download,
    ensure_downloaded,
    resolve_checkpoint,
)

PAYLOAD = random.Random(1234).randbytes(300_000)
CHUNK = 16 * 1024


# ------------------------------------------------------------------------ test server


@dataclass
class Served:
    """One request as the server saw it."""

    range: str | None
    status: int
    sent: int = 0


@dataclass
class ServerState:
    """What the server sends, and the log of what it was asked."""

    payload: bytes = PAYLOAD
    honour_range: bool = True
    statuses: list[int] = field(default_factory=list)  # forced statuses, one per request
    cuts: list[int | None] = field(default_factory=list)  # body bytes to send, then drop
    requests: list[Served] = field(default_factory=list)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"  # one request per connection: closing = end of body

    def log_message(self, format: str, *args: object) -> None:  # keep pytest output clean
        pass

    def do_GET(self) -> None:
        state: ServerState = self.server.state  # type: ignore[attr-defined]
        range_header = self.headers.get("Range")
        forced = state.statuses.pop(0) if state.statuses else None
        if forced is not None:
            state.requests.append(Served(range_header, forced))
            self.send_response(forced)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return

        data, start, status = state.payload, 0, 200
        if range_header and state.honour_range:
            match = re.fullmatch(r"bytes=(\d+)-", range_header)
            assert match, range_header
            start = int(match.group(1))
            if start >= len(data):
                state.requests.append(Served(range_header, 416))
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            status = 206
        body = data[start:]
        served = Served(range_header, status)
        state.requests.append(served)
        self.send_response(status)
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.send_header("Content-Length", str(len(body)))  # always the full length
        self.end_headers()
        cut = state.cuts.pop(0) if state.cuts else None
        if cut is not None:
            body = body[:cut]
        self.wfile.write(body)
        self.wfile.flush()
        served.sent = len(body)


@pytest.fixture
def server() -> Iterator[tuple[ServerState, str]]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.daemon_threads = True
    state = ServerState()
    httpd.state = state  # type: ignore[attr-defined]
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield state, f"http://127.0.0.1:{httpd.server_address[1]}/imagebind_huge.pth"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


@pytest.fixture(autouse=True)
def _no_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    """Retries wait 0 s here; the backoff itself is not what is under test."""
    monkeypatch.setattr(checkpoints, "_BACKOFF_BASE_S", 0.0)


def _get(url: str, dest: Path, **kwargs: object) -> Path:
    kwargs.setdefault("progress", False)
    return download(url, dest, chunk_bytes=CHUNK, timeout=5, **kwargs)  # type: ignore[arg-type]


def _part(dest: Path) -> Path:
    return dest.with_name(dest.name + ".part")


# --------------------------------------------------------------------------- registry


def test_registry_has_imagebind_huge() -> None:
    spec = WEIGHTS["imagebind_huge"]
    assert isinstance(spec, WeightSpec)
    assert spec.name == "imagebind_huge"
    assert spec.url == "https://dl.fbaipublicfiles.com/imagebind/imagebind_huge.pth"
    assert spec.filename == "imagebind_huge.pth"
    assert spec.approx_bytes == 4_500_000_000
    assert spec.licence == "CC-BY-NC-SA 4.0"
    with pytest.raises(AttributeError):
        spec.url = "http://elsewhere/"  # type: ignore[misc]  # frozen


# ---------------------------------------------------------------------- default paths


def test_default_path_is_home_cache(tmp_path: Path) -> None:
    env = {"HOME": str(tmp_path)}
    assert default_checkpoint_path(env=env) == tmp_path / ".cache/ib_vectorizer/imagebind_huge.pth"


def test_default_path_respects_xdg_cache_home(tmp_path: Path) -> None:
    env = {"HOME": str(tmp_path / "home"), "XDG_CACHE_HOME": str(tmp_path / "xdg")}
    assert default_checkpoint_path(env=env) == tmp_path / "xdg/ib_vectorizer/imagebind_huge.pth"


def test_default_path_ignores_relative_xdg_cache_home(tmp_path: Path) -> None:
    env = {"HOME": str(tmp_path), "XDG_CACHE_HOME": "relative/cache"}
    assert default_checkpoint_path(env=env) == tmp_path / ".cache/ib_vectorizer/imagebind_huge.pth"


def test_ib_checkpoint_wins_over_xdg(tmp_path: Path) -> None:
    env = {
        "HOME": str(tmp_path),
        "XDG_CACHE_HOME": str(tmp_path / "xdg"),
        "IB_CHECKPOINT": str(tmp_path / "weights/ib.pth"),
    }
    assert default_checkpoint_path(env=env) == tmp_path / "weights/ib.pth"
    # "~" is expanded against the given environment, not the real home.
    env["IB_CHECKPOINT"] = "~/ib.pth"
    assert default_checkpoint_path(env=env) == tmp_path / "ib.pth"
    # An empty IB_CHECKPOINT counts as unset.
    env["IB_CHECKPOINT"] = ""
    assert default_checkpoint_path(env=env) == tmp_path / "xdg/ib_vectorizer/imagebind_huge.pth"


def test_default_path_reads_process_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("IB_CHECKPOINT", str(tmp_path / "from-env.pth"))
    assert default_checkpoint_path() == tmp_path / "from-env.pth"
    monkeypatch.delenv("IB_CHECKPOINT")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert default_checkpoint_path() == tmp_path / "ib_vectorizer/imagebind_huge.pth"


def test_default_path_unknown_name() -> None:
    with pytest.raises(CheckpointError, match="imagebind_huge"):
        default_checkpoint_path("no_such_model", env={})


# -------------------------------------------------------------------------- download


def test_fresh_download_writes_exact_bytes(server, tmp_path: Path) -> None:
    state, url = server
    dest = tmp_path / "nested/dir/imagebind_huge.pth"
    assert _get(url, dest) == dest
    assert dest.read_bytes() == PAYLOAD
    assert not _part(dest).exists()
    assert [(r.range, r.status, r.sent) for r in state.requests] == [(None, 200, len(PAYLOAD))]


def test_resume_from_part_sends_range(server, tmp_path: Path, capsys) -> None:
    state, url = server
    dest = tmp_path / "imagebind_huge.pth"
    _part(dest).write_bytes(PAYLOAD[:100_000])
    _get(url, dest, progress=True)
    assert dest.read_bytes() == PAYLOAD
    assert not _part(dest).exists()
    assert [(r.range, r.status, r.sent) for r in state.requests] == [
        ("bytes=100000-", 206, len(PAYLOAD) - 100_000)
    ]
    assert dest.name in capsys.readouterr().err  # the tqdm bar went to stderr


def test_server_ignoring_range_restarts_from_zero(server, tmp_path: Path) -> None:
    state, url = server
    state.honour_range = False
    dest = tmp_path / "imagebind_huge.pth"
    # Wrong bytes in the .part: appending the 200 body to them would corrupt the file.
    _part(dest).write_bytes(b"\xff" * 100_000)
    _get(url, dest)
    assert dest.read_bytes() == PAYLOAD
    assert [(r.range, r.status, r.sent) for r in state.requests] == [
        ("bytes=100000-", 200, len(PAYLOAD))
    ]


def test_dropped_connection_is_resumed(server, tmp_path: Path) -> None:
    state, url = server
    state.cuts = [123_457]
    dest = tmp_path / "imagebind_huge.pth"
    _get(url, dest, retries=3)
    assert dest.read_bytes() == PAYLOAD
    assert not _part(dest).exists()
    assert [(r.range, r.status, r.sent) for r in state.requests] == [
        (None, 200, 123_457),
        ("bytes=123457-", 206, len(PAYLOAD) - 123_457),
    ]


def test_retries_exhausted_keeps_part_for_next_run(server, tmp_path: Path) -> None:
    state, url = server
    state.cuts = [50_000, 50_000, 50_000]
    dest = tmp_path / "imagebind_huge.pth"
    with pytest.raises(CheckpointError, match="rerun to resume") as info:
        _get(url, dest, retries=2)
    assert url in str(info.value)
    assert len(state.requests) == 3
    assert not dest.exists()
    assert _part(dest).read_bytes() == PAYLOAD[:150_000]
    # A later call picks up where the failed one stopped.
    _get(url, dest)
    assert dest.read_bytes() == PAYLOAD
    assert state.requests[-1].range == "bytes=150000-"


def test_server_error_is_retried(server, tmp_path: Path) -> None:
    state, url = server
    state.statuses = [503]
    dest = tmp_path / "imagebind_huge.pth"
    _get(url, dest, retries=1)
    assert dest.read_bytes() == PAYLOAD
    assert [r.status for r in state.requests] == [503, 200]


def test_complete_part_answered_416_is_finished(server, tmp_path: Path) -> None:
    state, url = server
    dest = tmp_path / "imagebind_huge.pth"
    _part(dest).write_bytes(PAYLOAD)  # crashed between last byte and rename
    _get(url, dest)
    assert dest.read_bytes() == PAYLOAD
    assert not _part(dest).exists()
    assert [(r.range, r.status) for r in state.requests] == [(f"bytes={len(PAYLOAD)}-", 416)]


def test_part_longer_than_file_is_restarted(server, tmp_path: Path) -> None:
    state, url = server
    dest = tmp_path / "imagebind_huge.pth"
    _part(dest).write_bytes(PAYLOAD + b"junk")  # not a prefix of anything the server has
    _get(url, dest, retries=1)
    assert dest.read_bytes() == PAYLOAD
    assert [(r.range, r.status) for r in state.requests] == [
        (f"bytes={len(PAYLOAD) + 4}-", 416),
        (None, 200),
    ]


def test_404_raises_with_advice_and_leaves_nothing(server, tmp_path: Path) -> None:
    state, url = server
    state.statuses = [404]
    dest = tmp_path / "imagebind_huge.pth"
    with pytest.raises(CheckpointError) as info:
        _get(url, dest, retries=3)
    message = str(info.value)
    assert url in message
    assert "404" in message
    assert "--checkpoint" in message
    assert "IB_CHECKPOINT" in message
    assert len(state.requests) == 1  # a 404 is not retried
    assert not dest.exists()
    assert not _part(dest).exists()


def test_existing_dest_makes_no_request(server, tmp_path: Path) -> None:
    state, url = server
    dest = tmp_path / "imagebind_huge.pth"
    dest.write_bytes(b"already here")
    assert _get(url, dest) == dest
    assert state.requests == []
    assert dest.read_bytes() == b"already here"


def test_unreachable_host_raises(tmp_path: Path) -> None:
    with socket.socket() as sock:  # a port that was free a moment ago: nothing listens
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/imagebind_huge.pth"
    dest = tmp_path / "imagebind_huge.pth"
    with pytest.raises(CheckpointError) as info:
        _get(url, dest, retries=1)
    assert url in str(info.value)
    assert "IB_CHECKPOINT" in str(info.value)
    assert not dest.exists()


# ---------------------------------------------------------- ensure_downloaded / resolve


def test_ensure_downloaded_uses_given_url_and_dest(server, tmp_path: Path) -> None:
    state, url = server
    dest = tmp_path / "w.pth"
    assert ensure_downloaded(dest=dest, url=url, progress=False) == dest
    assert dest.read_bytes() == PAYLOAD
    assert len(state.requests) == 1


def test_ensure_downloaded_unknown_name_lists_known() -> None:
    with pytest.raises(CheckpointError, match="imagebind_huge"):
        ensure_downloaded("imagebind_gigantic", dest=Path("/nonexistent/x.pth"))


def test_resolve_checkpoint_existing_file(tmp_path: Path, monkeypatch) -> None:
    ckpt = tmp_path / "ib.pth"
    ckpt.write_bytes(b"x")
    assert resolve_checkpoint(ckpt) == ckpt
    assert resolve_checkpoint(str(ckpt)) == ckpt
    monkeypatch.setenv("IB_CHECKPOINT", str(ckpt))
    assert resolve_checkpoint(None) == ckpt


def test_resolve_checkpoint_missing_says_what_to_run(tmp_path: Path, monkeypatch) -> None:
    missing = tmp_path / "nope.pth"
    with pytest.raises(CheckpointError) as info:
        resolve_checkpoint(missing)
    message = str(info.value)
    assert str(missing) in message
    assert f"ib-vectorizer download --output {missing}" in message
    assert "IB_CHECKPOINT" in message
    assert "--checkpoint" in message

    monkeypatch.delenv("IB_CHECKPOINT", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    with pytest.raises(CheckpointError) as info:
        resolve_checkpoint(None)
    assert "`ib-vectorizer download`" in str(info.value)
    assert str(tmp_path / "cache/ib_vectorizer/imagebind_huge.pth") in str(info.value)


def test_resolve_checkpoint_directory_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="directory"):
        resolve_checkpoint(tmp_path)
