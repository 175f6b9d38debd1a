"""Start the real ``ib-vectorizer serve`` as a subprocess on a free loopback port."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from .fixture_data import FIXTURE

TINY_ENV = {
    "IB_MODEL": str(FIXTURE / "config.json"),
    "IB_CHECKPOINT": str(FIXTURE / "state_dict.pt"),
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def http_status(url: str, method: str = "GET") -> int:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method=method), timeout=5) as r:
            return r.status
    except urllib.error.HTTPError as err:
        return err.code


class ServerProcess:
    """``with ServerProcess(IB_MAX_QUEUE="2") as server: server.url``"""

    def __init__(self, wait_ready: bool = True, **env: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {**os.environ, **TINY_ENV, "IB_LOG_LEVEL": "INFO", **env}
        self.wait_ready = wait_ready
        self.log_path: Path | None = None
        self.process: subprocess.Popen | None = None

    def __enter__(self) -> ServerProcess:
        import tempfile

        self._log = tempfile.NamedTemporaryFile(prefix="ib-serve-", suffix=".log", delete=False)
        self.log_path = Path(self._log.name)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "ib_vectorizer", "serve", "--host", "127.0.0.1",
             "--port", str(self.port)],
            env=self.env, stdout=self._log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        if self.wait_ready:
            self.wait_for(204, "/.well-known/ready")
        return self

    def wait_for(self, status: int, path: str, timeout_s: float = 120) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited {self.process.returncode}:\n{self.log()}")
            try:
                if http_status(self.url + path) == status:
                    return
            except OSError:
                pass
            time.sleep(0.05)
        raise TimeoutError(f"{path} never answered {status}:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path else ""

    def terminate(self, timeout_s: float = 60) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=timeout_s)

    def __exit__(self, *exc) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self._log.close()
        self.log_path.unlink(missing_ok=True)
