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

import json
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
class NodePorts:
    """One Weaviate node's ports; cluster data, Raft and Raft RPC follow ``gossip``."""

    http: int
    grpc: int
    profiling: int
    gossip: int

    @property
    def data(self) -> int:
        return self.gossip + 1

    @property
    def raft(self) -> int:
        return self.gossip + 2

    @property
    def raft_rpc(self) -> int:
        return self.gossip + 3

    def all(self) -> set[int]:
        return {self.http, self.grpc, self.profiling, *range(self.gossip, self.gossip + 4)}


@dataclass(frozen=True)
class NodeEndpoint:
    """How to reach one Weaviate node of the stack."""

    name: str
    http: str
    grpc_port: int
    pid: int


@dataclass(frozen=True)
class Endpoints:
    weaviate_http: str
    weaviate_grpc_port: int
    vectorizer: str
    nodes: tuple[NodeEndpoint, ...] = ()

    @property
    def weaviate_port(self) -> int:
        return int(self.weaviate_http.rsplit(":", 1)[1])

    def lines(self) -> list[str]:
        """What a Weaviate client needs, one line each: node 1, the vectorizer, every node."""
        lines = [
            f"weaviate http: {self.weaviate_http}",
            f"weaviate grpc: 127.0.0.1:{self.weaviate_grpc_port}",
            f"vectorizer: {self.vectorizer}",
        ]
        for number, node in enumerate(self.nodes, start=1):
            where = f"{node.http} grpc 127.0.0.1:{node.grpc_port}"
            lines.append(f"weaviate node {number}: {where} pid {node.pid}")
        return lines


class WeaviateNode:
    """One Weaviate process of the stack: its name, ports, data directory and log."""

    def __init__(self, name: str, ports: NodePorts, data_path: Path, log_path: Path) -> None:
        self.name = name
        self.ports = ports
        self.data_path = data_path
        self.log_path = log_path
        self.process: subprocess.Popen | None = None

    @property
    def label(self) -> str:
        """How logs and messages name it: its log file's name (weaviate, weaviate-node2)."""
        return self.log_path.stem

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.http}"

    def endpoint(self) -> NodeEndpoint:
        pid = self.process.pid if self.process is not None else 0
        return NodeEndpoint(self.name, self.http_url, self.ports.grpc, pid)

    def start(self, binary: Path, env: dict[str, str]) -> None:
        command = [str(binary), "--host", "127.0.0.1", "--port", str(self.ports.http)]
        command += ["--scheme", "http", "--read-timeout=600s", "--write-timeout=600s"]
        with self.log_path.open("ab") as log_file:  # the child has its own copy
            self.process = subprocess.Popen(
                command,
                env=env,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                preexec_fn=die_with_parent,
            )

    def wait_ready(self) -> None:
        try:
            wait_until_answered(
                self.process,
                f"{self.http_url}/v1/.well-known/ready",
                lambda status: (status or 0) // 100 == 2,
                f"weaviate {self.name}",
                self.log_path,
            )
        except ServerStartError as err:
            raise StackError(str(err)) from None

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL, as a crash would: no shutdown, no flush."""
        if self.running():
            self.process.kill()
            self.process.wait()

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            log.warning("weaviate %s did not stop within %g s; killing it", self.name, timeout)
            process.kill()
            process.wait()


class LocalStack:
    """``with LocalStack(data_dir, ModelOptions(...), nodes=3) as stack: stack.client()``

    ``nodes`` Weaviate processes form one cluster on this host the way
    Weaviate's own development script does it (``CLUSTER_IN_LOCALHOST``, a
    gossip/data/Raft/gRPC/HTTP port set and a data directory per node, every
    node in ``RAFT_JOIN``); each has ``multi2vec-bind`` pointed at our one
    inference server. A cluster keeps its ports in ``cluster/layout.json`` of
    the data directory, so a restart brings the same cluster back.
    """

    def __init__(
        self,
        data_dir: str | Path | None = None,
        model: ModelOptions | None = None,
        vectorizer_env: dict[str, str] | None = None,
        weaviate_version: str = WEAVIATE_VERSION,
        weaviate_binary: Path | None = None,
        nodes: int = 1,
    ) -> None:
        if nodes < 1:
            raise StackError(f"a stack needs at least one Weaviate node, not {nodes}")
        self.data_dir = Path(data_dir) if data_dir else default_data_dir()
        self.model = model or ModelOptions()
        self.vectorizer_env = vectorizer_env or {}
        self.weaviate_binary = weaviate_binary or embedded_binary_path(weaviate_version)
        self.node_count = nodes
        self.nodes: list[WeaviateNode] = []
        self.endpoints: Endpoints | None = None
        self._vectorizer: ServerProcess | None = None

    # ------------------------------------------------------------------ life cycle

    def start(self) -> Endpoints:
        if not self.weaviate_binary.exists():
            raise StackError(
                f"no Weaviate binary at {self.weaviate_binary}; run `make setup` "
                "(or `python -m pipelines.provision`) to provision it"
            )
        (self.data_dir / "logs").mkdir(parents=True, exist_ok=True)
        try:
            self.nodes = self._plan_nodes()
            taken = set().union(*(node.ports.all() for node in self.nodes))
            vectorizer = self._start_vectorizer(free_port_block(1, taken))
            for node in self.nodes:
                self._start_node(node, vectorizer)
            for node in self.nodes:  # they start together: Raft waits for all of them
                node.wait_ready()
        except BaseException:
            self.stop()
            raise
        self.endpoints = self._endpoints(vectorizer)
        log.info("stack ready: %s", "; ".join(self.endpoints.lines()))
        return self.endpoints

    def stop(self) -> None:
        """Weaviate first (it may still call the vectorizer), then the vectorizer."""
        for node in self.nodes:
            node.stop()
        vectorizer, self._vectorizer = self._vectorizer, None
        if vectorizer is not None:
            vectorizer.stop(STOP_TIMEOUT_S)
        self.endpoints = None

    def kill_node(self, number: int) -> None:
        """``kill -9`` Weaviate node ``number`` (1-based), as a crash would."""
        self._node(number).kill()

    def restart_node(self, number: int) -> None:
        """Start node ``number`` again on its ports and data, and wait until it is ready."""
        node = self._node(number)
        node.stop()
        self._start_node(node, self._vectorizer.url)
        node.wait_ready()
        self.endpoints = self._endpoints(self._vectorizer.url)

    def exited(self) -> str | None:
        """The name of a part that has died since start, if any."""
        for node in self.nodes:
            if node.process is not None and not node.running():
                return node.label
        if self._vectorizer is not None and self._vectorizer.exit_code() is not None:
            return "vectorizer"
        return None

    def __enter__(self) -> LocalStack:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def client(self, node: int = 1):
        """A weaviate-client v4 connection to node ``node`` (1-based; close it when done)."""
        import weaviate

        if self.endpoints is None:
            raise StackError("the stack is not running")
        ports = self._node(node).ports
        return weaviate.connect_to_local(host="127.0.0.1", port=ports.http, grpc_port=ports.grpc)

    def pids(self) -> dict[str, int]:
        """The process id of every Weaviate node and of the inference server, while running."""
        pids = {}
        for node in self.nodes:
            if node.running():
                pids[node.label] = node.process.pid
        if self._vectorizer is not None and self._vectorizer.process is not None:
            pids["vectorizer"] = self._vectorizer.process.pid
        return pids

    def log_path(self, name: str) -> Path:
        return self.data_dir / "logs" / f"{name}.log"

    def log_tail(self, name: str, lines: int = 30) -> str:
        return tail(self.log_path(name), lines)

    # ------------------------------------------------------------------ parts

    def _node(self, number: int) -> WeaviateNode:
        if not 1 <= number <= len(self.nodes):
            raise StackError(f"no Weaviate node {number}: the stack has {len(self.nodes)}")
        return self.nodes[number - 1]

    def _endpoints(self, vectorizer: str) -> Endpoints:
        first = self.nodes[0]
        nodes = tuple(node.endpoint() for node in self.nodes)
        return Endpoints(first.http_url, first.ports.grpc, vectorizer, nodes)

    def _plan_nodes(self) -> list[WeaviateNode]:
        """One node on fresh ports; a cluster on the ports its data directory remembers."""
        if self.node_count == 1:
            ports = fresh_node_ports(set())
            return [
                WeaviateNode("node1", ports, self.data_dir / "weaviate", self.log_path("weaviate"))
            ]
        root = self.data_dir / "cluster"
        layout = root / "layout.json"
        if layout.exists():
            saved = json.loads(layout.read_text())
            if saved["nodes"] != self.node_count:
                raise StackError(
                    f"{self.data_dir} holds a {saved['nodes']}-node cluster; start it with "
                    f"--nodes {saved['nodes']}, or use another --data-dir"
                )
            all_ports = [NodePorts(**ports) for ports in saved["ports"]]
            busy = sorted(p for ports in all_ports for p in ports.all() if not _port_free(p))
            if busy:
                raise StackError(
                    f"the cluster in {self.data_dir} uses ports {busy}, which something else "
                    "holds now; stop it (another ib-stack?) and start again"
                )
        else:
            all_ports, taken = [], set()
            for _ in range(self.node_count):
                all_ports.append(fresh_node_ports(taken))
                taken |= all_ports[-1].all()
            root.mkdir(parents=True, exist_ok=True)
            layout.write_text(
                json.dumps({"nodes": self.node_count, "ports": [vars(p) for p in all_ports]})
            )
        return [
            WeaviateNode(f"node{k}", ports, root / f"node{k}", self.log_path(f"weaviate-node{k}"))
            for k, ports in enumerate(all_ports, start=1)
        ]

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

    def _start_node(self, node: WeaviateNode, inference: str) -> None:
        node.start(self.weaviate_binary, {**self._weaviate_env(inference), **self._node_env(node)})

    def _weaviate_env(self, inference: str) -> dict[str, str]:
        """What every node shares: the module wired to our server, the embedded mode's settings."""
        return {
            **os.environ,
            "AUTHENTICATION_ANONYMOUS_ACCESS_ENABLED": "true",
            "DEFAULT_VECTORIZER_MODULE": "none",
            "ENABLE_MODULES": "multi2vec-bind",
            "BIND_INFERENCE_API": inference,
            "CLUSTER_IN_LOCALHOST": "true",
            "RAFT_BOOTSTRAP_EXPECT": str(self.node_count),
            "RAFT_JOIN": ",".join(f"{n.name}:{n.ports.raft}" for n in self.nodes),
            "DISABLE_TELEMETRY": "true",
            "QUERY_DEFAULTS_LIMIT": "20",
            "LOG_LEVEL": os.environ.get("WEAVIATE_LOG_LEVEL", "warning"),
        }

    def _node_env(self, node: WeaviateNode) -> dict[str, str]:
        """One node's name, ports and data; nodes after the first join the first's gossip."""
        env = {
            "PERSISTENCE_DATA_PATH": str(node.data_path),
            "GRPC_PORT": str(node.ports.grpc),
            "CLUSTER_HOSTNAME": node.name,
            "CLUSTER_GOSSIP_BIND_PORT": str(node.ports.gossip),
            "CLUSTER_DATA_BIND_PORT": str(node.ports.data),
            "RAFT_PORT": str(node.ports.raft),
            "RAFT_INTERNAL_RPC_PORT": str(node.ports.raft_rpc),
            "PROFILING_PORT": str(node.ports.profiling),
        }
        if node is not self.nodes[0]:
            env["CLUSTER_JOIN"] = f"localhost:{self.nodes[0].ports.gossip}"
        return env


def fresh_node_ports(taken: set[int], attempts: int = 50) -> NodePorts:
    """Ports for one Weaviate node, free now and none of them in ``taken``."""
    for _ in range(attempts):
        http, grpc, profiling = free_ports(3)
        if not taken & {http, grpc, profiling}:
            gossip = free_port_block(4, taken | {http, grpc, profiling})
            return NodePorts(http, grpc, profiling, gossip)
    raise StackError("found no free ports for a Weaviate node")


def _port_free(port: int) -> bool:
    """Whether a listener could bind ``port`` now (as Weaviate does, past TIME_WAIT)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


# ---------------------------------------------------------------------------- ib-stack


def build_parser() -> CommandParser:
    parser = CommandParser(
        prog="ib-stack",
        description="Run our inference server plus a Weaviate wired to it as its multi2vec-bind "
        "vectorizer, until Ctrl-C or SIGTERM. Prints the endpoints, one per line.",
    )
    parser.add_argument("--data-dir", default=None, help="where Weaviate keeps its data and logs")
    parser.add_argument(
        "--nodes",
        type=int,
        default=1,
        help="Weaviate nodes forming one cluster on this host (default 1)",
    )
    add_flags(parser.add_argument_group("the inference server's model"), ModelOptions)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    console_logging()
    args = build_parser().parse_args(argv)
    try:
        if args.nodes < 1:
            raise CommandError(f"--nodes must be 1 or more, not {args.nodes}")
        model = from_sources(ModelOptions, args)
        check_checkpoint(model)
        # Until both are ready, Ctrl-C interrupts start() itself, which stops what it started.
        with LocalStack(args.data_dir, model, nodes=args.nodes) as stack:
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
