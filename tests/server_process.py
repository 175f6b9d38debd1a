"""The real ``ib-vectorizer serve`` with the tiny fixture model, on a free loopback port."""

from __future__ import annotations

from ib_vectorizer.server_process import ServerProcess as _ServerProcess
from ib_vectorizer.server_process import http_status

from .fixture_data import FIXTURE

__all__ = ["TINY_ENV", "ServerProcess", "http_status"]

TINY_ENV = {
    "IB_MODEL": str(FIXTURE / "config.json"),
    "IB_CHECKPOINT": str(FIXTURE / "state_dict.pt"),
}


class ServerProcess(_ServerProcess):
    """``with ServerProcess(IB_MAX_QUEUE="2") as server: server.url`` (ready on entry)."""

    def __init__(self, wait_ready: bool = True, **env: str) -> None:
        super().__init__({**TINY_ENV, "IB_LOG_LEVEL": "INFO", **env})
        self._wait_ready = wait_ready

    def __enter__(self) -> ServerProcess:
        self.start()
        if self._wait_ready:
            self.wait_ready(timeout_s=120)
        return self

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path else ""
