"""``ib-vectorizer serve`` as a child process: start it, wait until ready, stop it.

The benchmark, the local stack and the tests all run the real server this
way. The child listens on a free loopback port, writes its output to a log
file (whose tail goes into every start-up error), runs in its own session so a
Ctrl-C reaches only its owner (who then stops it), and on Linux gets SIGTERM
when its owner dies, so nothing is orphaned even after a ``kill -9``.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path

READY_PATH = "/.well-known/ready"
READY_TIMEOUT_S = 600.0  # imagebind_huge takes minutes to load on a CPU
STOP_GRACE_S = 30.0


class ServerStartError(RuntimeError):
    """The server exited or did not get ready; the message ends with its output."""


def free_ports(count: int) -> list[int]:
    """Ports the OS reports free on 127.0.0.1 right now (held open together, so distinct)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def free_port() -> int:
    return free_ports(1)[0]


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    """Whether a listener could bind ``port`` on ``host`` now (past TIME_WAIT, as servers do)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def http_status(
    url: str, headers: Mapping[str, str] | None = None, method: str = "GET", timeout: float = 5.0
) -> int | None:
    """The HTTP status of one request, or None when nothing answers."""
    request = urllib.request.Request(url, headers=dict(headers or {}), method=method)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status
    except urllib.error.HTTPError as err:
        return err.code
    except (urllib.error.URLError, OSError):
        return None


def die_with_parent() -> None:
    """In a child (``preexec_fn``): get SIGTERM when the parent dies."""
    if sys.platform.startswith("linux"):
        pr_set_pdeathsig = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def tail(path: Path | None, lines: int = 40) -> str:
    """The last lines of a log file, for error messages."""
    try:
        text = path.read_text(errors="replace") if path else ""
    except OSError:
        text = ""
    return "\n".join(text.splitlines()[-lines:]) or "(no output)"


def wait_until_answered(
    process: subprocess.Popen,
    url: str,
    answered: Callable[[int | None], bool],
    name: str,
    log_path: Path | None,
    timeout_s: float = READY_TIMEOUT_S,
) -> None:
    """Poll ``url`` until its HTTP status satisfies ``answered``.

    Raises :class:`ServerStartError`, ending with the tail of ``log_path``, if
    ``process`` exits first or ``timeout_s`` passes.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        code = process.poll()
        if code is not None:
            raise ServerStartError(
                f"the {name} exited with status {code} during start-up; "
                f"its output ends with:\n{tail(log_path)}"
            )
        if answered(http_status(url, timeout=2.0)):
            return
        if time.monotonic() > deadline:
            raise ServerStartError(
                f"the {name} was not ready after {timeout_s:g} s; "
                f"its output ends with:\n{tail(log_path)}"
            )
        time.sleep(0.05)


class ServerProcess:
    """``with ServerProcess({"IB_MODEL": ...}) as server: server.wait_ready(); server.url``

    ``env`` is added to this process's environment. ``log_path`` receives the
    server's output (appended); without it a temporary file is used and
    removed when the server is stopped.
    """

    def __init__(
        self,
        env: Mapping[str, str] | None = None,
        *,
        log_path: Path | None = None,
        port: int | None = None,
        name: str = "inference server",
    ) -> None:
        self.name = name
        self.env = {**os.environ, **(env or {})}
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self._own_log = log_path is None
        self.process: subprocess.Popen | None = None

    def start(self) -> ServerProcess:
        if self.log_path is None:
            handle, name = tempfile.mkstemp(prefix="ib-serve-", suffix=".log")
            os.close(handle)
            self.log_path = Path(name)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, "-m", "ib_vectorizer", "serve"]
        command += ["--host", "127.0.0.1", "--port", str(self.port)]
        with self.log_path.open("ab") as log:  # the child keeps its own descriptor
            try:
                self.process = subprocess.Popen(
                    command,
                    env=self.env,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    preexec_fn=die_with_parent,
                )
            except OSError as err:
                raise ServerStartError(f"cannot start the {self.name}: {err}") from None
        return self

    def wait_for(self, path: str, status: int, timeout_s: float = READY_TIMEOUT_S) -> None:
        """Poll ``path`` until it answers ``status``; fail with the server's output if it exits."""
        assert self.process is not None, "start() first"
        wait_until_answered(
            self.process,
            self.url + path,
            lambda got: got == status,
            self.name,
            self.log_path,
            timeout_s,
        )

    def wait_ready(self, timeout_s: float = READY_TIMEOUT_S) -> None:
        self.wait_for(READY_PATH, 204, timeout_s)

    def exit_code(self) -> int | None:
        """None while it runs."""
        return None if self.process is None else self.process.poll()

    def signal(self, sig: signal.Signals) -> None:
        """Send ``sig`` to the server's process group (it leads one)."""
        if self.process is None:
            return
        try:
            os.killpg(self.process.pid, sig)
        except (ProcessLookupError, PermissionError):
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(sig)

    def stop(self, grace_s: float = STOP_GRACE_S) -> int | None:
        """SIGTERM (the server drains), SIGKILL after ``grace_s``; returns the exit status."""
        process = self.process
        code = None
        if process is not None:
            if process.poll() is None:
                self.signal(signal.SIGTERM)
                try:
                    process.wait(timeout=grace_s)
                except subprocess.TimeoutExpired:
                    self.signal(signal.SIGKILL)
                    process.wait()
            code = process.returncode
        if self._own_log and self.log_path is not None:
            self.log_path.unlink(missing_ok=True)
            self.log_path = None
        return code

    def log_tail(self, lines: int = 40) -> str:
        return tail(self.log_path, lines)

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
