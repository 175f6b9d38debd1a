"""The local stack: our inference server plus an embedded Weaviate wired to it.

One class starts both for a user (``ib-stack``), a query
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

import logging
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ib_vectorizer.options import ModelOptions, add_flags, as_env, from_sources
from ib_vectorizer.server_process import (
    ServerProcess,
    ServerStartError,
    die_with_parent,
    free_ports,
    tail,
    wait_until_answered,
)

from .command import CommandError, CommandParser, check_checkpoint, console_logging, fail
from .provision import WEAVIATE_VERSION, embedded_binary_path

log = logging.getLogger(__name__)

STOP_TIMEOUT_S = 30.0


class StackError(RuntimeError):
    """A part of the stack could not start; the message says which and why."""


def default_data_dir(env: dict[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    base = Path(env["XDG_DATA_HOME"]) if env.get("XDG_DATA_HOME") else Path.home() / ".local/share"
    return base / "ib_vectorizer" / "stack"


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
    """``with LocalStack(data_dir, ModelOptions(...)) as stack: stack.client()``"""

    def __init__(
        self,
        data_dir: str | Path | None = None,
        model: ModelOptions | None = None,
        vectorizer_env: dict[str, str] | None = None,
        weaviate_version: str = WEAVIATE_VERSION,
        weaviate_binary: Path | None = None,
    ) -> None:
        self.data_dir = Path(data_dir) if data_dir else default_data_dir()
        self.model = model or ModelOptions()
        self.vectorizer_env = vectorizer_env or {}
        self.weaviate_binary = weaviate_binary or embedded_binary_path(weaviate_version)
        self.endpoints: Endpoints | None = None
        self._vectorizer: ServerProcess | None = None
        self._weaviate: subprocess.Popen | None = None

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
        try:
            vectorizer = self._start_vectorizer(vectorizer_port)
            self._start_weaviate(http_port, grpc_port, profiling_port, taken, vectorizer)
            self._wait_for_weaviate(f"http://127.0.0.1:{http_port}/v1/.well-known/ready")
        except BaseException:
            self.stop()
            raise
        self.endpoints = Endpoints(f"http://127.0.0.1:{http_port}", grpc_port, vectorizer)
        log.info("stack ready: %s", "; ".join(self.endpoints.lines()))
        return self.endpoints

    def stop(self) -> None:
        """Weaviate first (it may still call the vectorizer), then the vectorizer."""
        weaviate, self._weaviate = self._weaviate, None
        if weaviate is not None and weaviate.poll() is None:
            weaviate.terminate()
            try:
                weaviate.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                log.warning("weaviate did not stop within %g s; killing it", STOP_TIMEOUT_S)
                weaviate.kill()
                weaviate.wait()
        vectorizer, self._vectorizer = self._vectorizer, None
        if vectorizer is not None:
            vectorizer.stop(STOP_TIMEOUT_S)
        self.endpoints = None

    def exited(self) -> str | None:
        """The name of a part that has died since start, if any."""
        if self._weaviate is not None and self._weaviate.poll() is not None:
            return "weaviate"
        if self._vectorizer is not None and self._vectorizer.exit_code() is not None:
            return "vectorizer"
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

    def pids(self) -> dict[str, int]:
        """The process id of Weaviate and of the inference server, while running."""
        pids = {}
        if self._weaviate is not None:
            pids["weaviate"] = self._weaviate.pid
        if self._vectorizer is not None and self._vectorizer.process is not None:
            pids["vectorizer"] = self._vectorizer.process.pid
        return pids

    def log_path(self, name: str) -> Path:
        return self.data_dir / "logs" / f"{name}.log"

    def log_tail(self, name: str, lines: int = 30) -> str:
        return tail(self.log_path(name), lines)

    # ------------------------------------------------------------------ parts

    def _start_vectorizer(self, port: int) -> str:
        env = {**as_env(self.model), **self.vectorizer_env}
        self._vectorizer = ServerProcess(
            env, log_path=self.log_path("vectorizer"), port=port, name="vectorizer"
        ).start()
        try:
            self._vectorizer.wait_ready()
        except ServerStartError as err:
            raise StackError(str(err)) from None
        return self._vectorizer.url

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
        command = [str(self.weaviate_binary), "--host", "127.0.0.1", "--port", str(http)]
        command += ["--scheme", "http", "--read-timeout=600s", "--write-timeout=600s"]
        with self.log_path("weaviate").open("ab") as log_file:  # the child has its own copy
            self._weaviate = subprocess.Popen(
                command,
                env=env,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                preexec_fn=die_with_parent,
            )

    def _wait_for_weaviate(self, url: str) -> None:
        try:
            wait_until_answered(
                self._weaviate,
                url,
                lambda status: (status or 0) // 100 == 2,
                "weaviate",
                self.log_path("weaviate"),
            )
        except ServerStartError as err:
            raise StackError(str(err)) from None


# ---------------------------------------------------------------------------- ib-stack


def build_parser() -> CommandParser:
    parser = CommandParser(
        prog="ib-stack",
        description="Run our inference server plus a Weaviate wired to it as its multi2vec-bind "
        "vectorizer, until Ctrl-C or SIGTERM. Prints the endpoints, one per line.",
    )
    parser.add_argument("--data-dir", default=None, help="where Weaviate keeps its data and logs")
    add_flags(parser.add_argument_group("the inference server's model"), ModelOptions)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    console_logging()
    args = build_parser().parse_args(argv)
    try:
        model = from_sources(ModelOptions, args)
        check_checkpoint(model)
        # Until both are ready, Ctrl-C interrupts start() itself, which stops what it started.
        with LocalStack(args.data_dir, model) as stack:
            stop = threading.Event()
            for signum in (signal.SIGTERM, signal.SIGINT):
                signal.signal(signum, lambda *_: stop.set())
            for line in stack.endpoints.lines():
                print(line, flush=True)
            while not stop.wait(1.0):
                dead = stack.exited()
                if dead:
                    log.error("%s exited; stopping the stack:\n%s", dead, stack.log_tail(dead))
                    return 1
            log.info("stopping the stack")
    except (CommandError, StackError, ValueError) as err:
        return fail("ib-stack", str(err))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
