"""The local stack: our inference server plus an embedded Weaviate wired to it.

One class starts both for a user (``ib-vectorizer stack``), a query
(``ib-query``), an ingestion job or a test: free ports, Weaviate with
``ENABLE_MODULES=multi2vec-bind`` and ``BIND_INFERENCE_API`` pointing at our
server, data persisted under a data directory, both waited for until ready,
and both stopped cleanly, also on Ctrl-C or a failure. The children die with
us even if we are killed outright (Linux parent-death signal).

Weaviate runs from the binary weaviate-client's embedded mode uses
(``make setup`` provisions it; see :mod:`pipelines.provision`), with the
embedded mode's settings, except that the cluster host name is fixed so the
data directory survives restarts on new ports.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from .provision import WEAVIATE_VERSION, embedded_binary_path

log = logging.getLogger(__name__)

READY_TIMEOUT_S = 600.0  # imagebind_huge takes minutes to load on a CPU
STOP_TIMEOUT_S = 30.0


class StackError(RuntimeError):
    """A part of the stack could not start; the message says which and why."""


def default_data_dir(env: dict[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    base = Path(env["XDG_DATA_HOME"]) if env.get("XDG_DATA_HOME") else Path.home() / ".local/share"
    return base / "ib_vectorizer" / "stack"


def free_ports(count: int) -> list[int]:
    """Ports the OS reports free right now (held open together so they differ)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def free_port_block(size: int, avoid: set[int] = frozenset(), attempts: int = 50) -> int:
    """First of ``size`` consecutive free ports, none in ``avoid``.

    Weaviate wants its cluster data port right after the gossip port.
    """
    for _ in range(attempts):
        first = free_ports(1)[0]
        if first + size > 65535 or avoid & set(range(first, first + size)):
            continue
        sockets = []
        try:
            for port in range(first, first + size):
                sock = socket.socket()
                sockets.append(sock)
                sock.bind(("127.0.0.1", port))
            return first
        except OSError:
            continue
        finally:
            for sock in sockets:
                sock.close()
    raise StackError(f"found no {size} consecutive free ports")


def _die_with_parent() -> None:
    """In the child: get SIGTERM when the parent dies, so nothing is orphaned."""
    if sys.platform.startswith("linux"):
        pr_set_pdeathsig = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def _http_ok(url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return 200 <= response.status < 300
    except (urllib.error.URLError, OSError):
        return False


@dataclass(frozen=True)
class Endpoints:
    weaviate_http: str
    weaviate_grpc_port: int
    vectorizer: str

    @property
    def weaviate_port(self) -> int:
        return int(self.weaviate_http.rsplit(":", 1)[1])

    def lines(self) -> list[str]:
        """What a Weaviate client needs, one line each."""
        return [
            f"weaviate http: {self.weaviate_http}",
            f"weaviate grpc: 127.0.0.1:{self.weaviate_grpc_port}",
            f"vectorizer: {self.vectorizer}",
        ]


class LocalStack:
    """``with LocalStack(data_dir) as stack: stack.client()``"""

    def __init__(
        self,
        data_dir: str | Path | None = None,
        model: str | None = None,
        checkpoint: str | None = None,
        vectorizer_env: dict[str, str] | None = None,
        weaviate_version: str = WEAVIATE_VERSION,
        weaviate_binary: Path | None = None,
    ) -> None:
        self.data_dir = Path(data_dir) if data_dir else default_data_dir()
        self.model = model
        self.checkpoint = checkpoint
        self.vectorizer_env = vectorizer_env or {}
        self.weaviate_binary = weaviate_binary or embedded_binary_path(weaviate_version)
        self.endpoints: Endpoints | None = None
        self._processes: dict[str, subprocess.Popen] = {}

    # ------------------------------------------------------------------ life cycle

    def start(self) -> Endpoints:
        if not self.weaviate_binary.exists():
            raise StackError(
                f"no Weaviate binary at {self.weaviate_binary}; run `make setup` "
                "(or `python -m pipelines.provision`) to provision it"
            )
        (self.data_dir / "logs").mkdir(parents=True, exist_ok=True)
        vectorizer_port, http_port, grpc_port, profiling_port = free_ports(4)
        taken = {vectorizer_port, http_port, grpc_port, profiling_port}
        vectorizer = f"http://127.0.0.1:{vectorizer_port}"
        try:
            self._start_vectorizer(vectorizer_port)
            self._wait("vectorizer", f"{vectorizer}/.well-known/ready")
            self._start_weaviate(http_port, grpc_port, profiling_port, taken, vectorizer)
            self._wait("weaviate", f"http://127.0.0.1:{http_port}/v1/.well-known/ready")
        except BaseException:
            self.stop()
            raise
        self.endpoints = Endpoints(f"http://127.0.0.1:{http_port}", grpc_port, vectorizer)
        log.info("stack ready: %s", "; ".join(self.endpoints.lines()))
        return self.endpoints

    def stop(self) -> None:
        """Weaviate first (it may still call the vectorizer), then the vectorizer."""
        for name in ("weaviate", "vectorizer"):
            process = self._processes.pop(name, None)
            if process is None or process.poll() is not None:
                continue
            process.terminate()
            try:
                process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop within %g s; killing it", name, STOP_TIMEOUT_S)
                process.kill()
                process.wait()
        self.endpoints = None

    def exited(self) -> str | None:
        """The name of a part that has died since start, if any."""
        for name, process in self._processes.items():
            if process.poll() is not None:
                return name
        return None

    def __enter__(self) -> LocalStack:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def client(self):
        """A weaviate-client v4 connection to this stack's Weaviate (close it when done)."""
        import weaviate

        if self.endpoints is None:
            raise StackError("the stack is not running")
        return weaviate.connect_to_local(
            host="127.0.0.1",
            port=self.endpoints.weaviate_port,
            grpc_port=self.endpoints.weaviate_grpc_port,
        )

    # ------------------------------------------------------------------ parts

    def _spawn(self, name: str, command: list[str], env: dict[str, str]) -> None:
        log_file = open(self.data_dir / "logs" / f"{name}.log", "ab")  # noqa: SIM115
        try:
            self._processes[name] = subprocess.Popen(
                command, env=env, stdout=log_file, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent,
            )  # fmt: skip
        finally:
            log_file.close()  # the child has its own descriptor

    def _start_vectorizer(self, port: int) -> None:
        env = {**os.environ, **self.vectorizer_env}
        if self.model:
            env["IB_MODEL"] = str(self.model)
        if self.checkpoint:
            env["IB_CHECKPOINT"] = str(self.checkpoint)
        command = [sys.executable, "-m", "ib_vectorizer", "serve",
                   "--host", "127.0.0.1", "--port", str(port)]  # fmt: skip
        self._spawn("vectorizer", command, env)

    def _start_weaviate(
        self, http: int, grpc: int, profiling: int, taken: set[int], inference: str
    ) -> None:
        gossip = free_port_block(4, avoid=taken)
        data, raft, raft_rpc = gossip + 1, gossip + 2, gossip + 3
        env = {
            **os.environ,
            "AUTHENTICATION_ANONYMOUS_ACCESS_ENABLED": "true",
            "PERSISTENCE_DATA_PATH": str(self.data_dir / "weaviate"),
            "DEFAULT_VECTORIZER_MODULE": "none",
            "ENABLE_MODULES": "multi2vec-bind",
            "BIND_INFERENCE_API": inference,
            "GRPC_PORT": str(grpc),
            "CLUSTER_HOSTNAME": "node1",
            "CLUSTER_GOSSIP_BIND_PORT": str(gossip),
            "CLUSTER_DATA_BIND_PORT": str(data),
            "CLUSTER_IN_LOCALHOST": "true",
            "RAFT_PORT": str(raft),
            "RAFT_INTERNAL_RPC_PORT": str(raft_rpc),
            "RAFT_BOOTSTRAP_EXPECT": "1",
            "RAFT_JOIN": f"node1:{raft}",
            "PROFILING_PORT": str(profiling),
            "DISABLE_TELEMETRY": "true",
            "QUERY_DEFAULTS_LIMIT": "20",
            "LOG_LEVEL": os.environ.get("WEAVIATE_LOG_LEVEL", "warning"),
        }
        command = [str(self.weaviate_binary), "--host", "127.0.0.1", "--port", str(http),
                   "--scheme", "http", "--read-timeout=600s", "--write-timeout=600s"]  # fmt: skip
        self._spawn("weaviate", command, env)

    def _wait(self, name: str, url: str, timeout_s: float = READY_TIMEOUT_S) -> None:
        process = self._processes[name]
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise StackError(
                    f"{name} exited with status {process.returncode} during start-up:\n"
                    + self.log_tail(name)
                )
            if _http_ok(url):
                return
            time.sleep(0.1)
        raise StackError(f"{name} not ready after {timeout_s:g} s:\n{self.log_tail(name)}")

    def log_tail(self, name: str, lines: int = 30) -> str:
        path = self.data_dir / "logs" / f"{name}.log"
        if not path.exists():
            return "(no log)"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
