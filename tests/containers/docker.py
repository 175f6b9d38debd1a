"""Containers for the tests: run, wait for health, find their ports, clean up.

The docker CLI itself is called through :mod:`.provision` (``docker``, ``inspect``).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable

from ib_vectorizer.server_process import http_status

from .provision import docker, inspect


def unique_name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def wait_for(condition: Callable[[], object], timeout_s: float, what: str, interval_s=1.0):
    """Poll until ``condition()`` is truthy; return it, or fail naming what never happened."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval_s)
    raise AssertionError(f"{what} did not happen within {timeout_s:.0f} s")


class Container:
    """One ``docker run -d`` container; removed (with its anonymous volumes) on exit."""

    def __init__(self, image: str, *run_args: str, command: tuple[str, ...] = ()) -> None:
        self.name = unique_name("ib-test")
        self.image = image
        self.run_args = run_args
        self.command = command

    def __enter__(self) -> Container:
        docker("run", "-d", "--name", self.name, *self.run_args, self.image, *self.command)
        return self

    def __exit__(self, *exc) -> None:
        docker("rm", "-f", "-v", self.name, check=False)

    def state(self) -> dict:
        return inspect("container", self.name)["State"]

    def health(self) -> str | None:
        health = self.state().get("Health")
        return health["Status"] if health else None

    def wait_healthy(self, timeout_s: float = 300) -> None:
        def healthy() -> bool:
            state = self.state()
            if not state["Running"]:
                raise AssertionError(f"{self.name} exited {state['ExitCode']}:\n{self.logs()}")
            return state.get("Health", {}).get("Status") == "healthy"

        wait_for(healthy, timeout_s, f"{self.name} becoming healthy")

    def url(self, port: int = 8080) -> str:
        """The container's port as published on the host's loopback."""
        published = docker("port", self.name, f"{port}/tcp").stdout.split()[0]
        return "http://" + published

    def logs(self) -> str:
        result = docker("logs", self.name, check=False)
        return result.stdout + result.stderr

    def ready(self) -> int | None:
        return http_status(self.url() + "/.well-known/ready")
