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

Everything listens on 127.0.0.1 unless ``host`` says otherwise, and then only
Weaviate's HTTP and gRPC APIs follow it, behind an API key: gossip, Raft and
the cluster API carry no client traffic and stay on loopback, the profiler is
off, and the inference server only answers Weaviate. A Weaviate binary that is
not our build (it cannot keep gRPC and the cluster API on loopback) runs with
an API key too. ``docs/local-stack.md`` has the table of ports.

A part that dies (a crash, the OOM killer) is started again on its ports and
data by :meth:`LocalStack.supervise`, which ``ib-stack`` calls every second.

One stack at a time runs on a data directory (a lock), and ``ib-stack``
publishes its endpoints there: the other commands use a running stack through
:func:`stack_for` rather than start a second one beside it.
"""

from __future__ import annotations

import fcntl
import ipaddress
import json
import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from urllib.parse import urlparse

from ib_vectorizer.options import ModelOptions, add_flags, as_env, from_sources
from ib_vectorizer.server_process import (
    READY_PATH,
    READY_TIMEOUT_S,
    ServerProcess,
    ServerStartError,
    die_with_parent,
    free_ports,
    http_status,
    port_free,
    tail,
    wait_until_answered,
)

from .command import CommandError, CommandParser, check_checkpoint, console_logging, fail
from .paths import has_scheme
from .provision import WEAVIATE_VERSION, embedded_binary_path, has_listen_address_edits

log = logging.getLogger(__name__)

STOP_TIMEOUT_S = 30.0
LOOPBACK = "127.0.0.1"
USUAL_PORTS = (8080, 50051)  # Weaviate's own defaults: what weaviate.connect_to_local() expects
ENDPOINTS_FILE = "endpoints.json"  # in the data directory while an ib-stack serves it
LOCK_FILE = "stack.lock"  # flock'ed by the process whose stack runs on the data directory
LOCK_PATIENCE_S = 1.0  # a command peeking at the lock holds it for microseconds
API_KEY_USER = "ib-stack"  # the user Weaviate names for the stack's API key
# Waits before each restart of a part that keeps dying within STABLE_S of its start;
# one more such death and it is not started again (a crash loop helps nobody).
RESTART_DELAYS_S = (1.0, 2.0, 4.0, 8.0)
STABLE_S = 60.0


class StackError(RuntimeError):
    """A part of the stack could not start; the message says which and why."""


class StackBusy(StackError):
    """Another live stack holds the data directory; the message names its process."""


def default_data_dir(env: dict[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    base = Path(env["XDG_DATA_HOME"]) if env.get("XDG_DATA_HOME") else Path.home() / ".local/share"
    return base / "ib_vectorizer" / "stack"


def check_host(host: str, api_key: str | None) -> None:
    """``host`` is an IPv4 address; one beyond loopback only with an API key."""
    try:
        address = ipaddress.IPv4Address(host)
    except ValueError:
        raise StackError(
            f"--host {host!r} is not an IPv4 address: give 127.0.0.1 (the default), "
            "0.0.0.0 (every interface) or one of this machine's addresses"
        ) from None
    if not address.is_loopback and not api_key:
        raise StackError(
            f"--host {host} lets other machines reach Weaviate: give it an API key "
            "with --api-key KEY or $WEAVIATE_API_KEY"
        )
    if api_key is not None and (not api_key or "," in api_key or api_key != api_key.strip()):
        raise StackError("the API key must be non-empty, without commas or surrounding spaces")


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
                sock.bind((LOOPBACK, port))
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
        return {self.http, self.grpc, *range(self.gossip, self.gossip + 4)}


@dataclass(frozen=True)
class NodeEndpoint:
    """How to reach one Weaviate node of the stack."""

    name: str
    http: str
    grpc_port: int
    pid: int

    def line(self) -> str:
        return f"{self.http} grpc {urlparse(self.http).hostname}:{self.grpc_port} pid {self.pid}"


@dataclass(frozen=True)
class Endpoints:
    weaviate_http: str
    weaviate_grpc_port: int
    vectorizer: str
    nodes: tuple[NodeEndpoint, ...] = ()

    @property
    def weaviate_port(self) -> int:
        return int(self.weaviate_http.rsplit(":", 1)[1])

    def as_record(self) -> dict:
        return asdict(self)

    @classmethod
    def from_record(cls, record: dict) -> Endpoints:
        """The endpoints an :data:`ENDPOINTS_FILE` holds (KeyError, TypeError if it does not)."""
        nodes = tuple(NodeEndpoint(**node) for node in record["nodes"])
        return cls(
            record["weaviate_http"], int(record["weaviate_grpc_port"]), record["vectorizer"], nodes
        )

    def lines(self) -> list[str]:
        """What a Weaviate client needs, one line each: node 1, the vectorizer, every node."""
        lines = [
            f"weaviate http: {self.weaviate_http}",
            f"weaviate grpc: {urlparse(self.weaviate_http).hostname}:{self.weaviate_grpc_port}",
            f"vectorizer: {self.vectorizer}",
        ]
        for number, node in enumerate(self.nodes, start=1):
            lines.append(f"weaviate node {number}: {node.line()}")
        return lines


# ---------------------------------------------------------------------------- one per data dir


class DataDirLock:
    """The data directory's lock: one stack at a time on it.

    Two Weaviates on one data directory wait on each other's files and never
    get ready; the second stack is refused at once instead. The lock is an
    ``flock`` on :data:`LOCK_FILE`, which the kernel drops when the process
    ends, however it ends, so a stack killed outright leaves nothing to clean.
    The file holds the holder's pid, for the message that refuses the next one.
    """

    def __init__(self, data_dir: Path, shown: str) -> None:
        self.data_dir = data_dir
        self.shown = shown
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take it, or StackBusy naming the process that holds it."""
        fd = os.open(self.data_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + LOCK_PATIENCE_S
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    os.close(fd)
                    raise StackBusy(busy_message(self.data_dir, self.shown)) from None
                time.sleep(0.05)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.ftruncate(fd, 0)
            os.close(fd)


def lock_holder(data_dir: Path) -> int | None:
    """The pid of the process whose stack holds ``data_dir`` (0 if it has not said yet), or
    None when no live stack does."""
    try:
        fd = os.open(data_dir / LOCK_FILE, os.O_RDONLY)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            text = os.read(fd, 32).decode(errors="replace").strip()
            return int(text) if text.isdigit() else 0
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def process_line(pid: int) -> str:
    """``pid 1234 (ib-stack --data-dir ./data)``: who holds a data directory, for a message."""
    if pid <= 0:
        return "another process"
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return f"pid {pid}"
    argv = [arg for arg in argv if arg]
    if len(argv) > 1 and Path(argv[0]).name.startswith("python"):
        if argv[1] == "-c":  # code, then its arguments
            argv = ["python -c …", *argv[3:]]
        elif argv[1] == "-m":
            argv = [f"python -m {argv[2] if len(argv) > 2 else ''}", *argv[3:]]
        else:
            argv = argv[1:]  # a console script: the interpreter, then the script
    if not argv:
        return f"pid {pid}"
    command = " ".join([Path(argv[0]).name, *argv[1:]])
    return f"pid {pid} ({command if len(command) <= 80 else command[:79] + '…'})"


WEAVIATE_READY_PATH = "/v1/.well-known/ready"


def ready_status(status: int | None) -> bool:
    """Whether an answer from :data:`WEAVIATE_READY_PATH` means ready (any 2xx)."""
    return (status or 0) // 100 == 2


def weaviate_ready(url: str, timeout: float = 2.0) -> bool:
    """Whether Weaviate at ``url`` says it is ready (that endpoint needs no API key)."""
    return ready_status(http_status(url + WEAVIATE_READY_PATH, timeout=timeout))


def published_record(data_dir: Path) -> dict | None:
    """What :data:`ENDPOINTS_FILE` in ``data_dir`` says, or None without a readable one."""
    try:
        record = json.loads((data_dir / ENDPOINTS_FILE).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def running_stack(data_dir: Path) -> dict | None:
    """The published record of the live stack on ``data_dir``: its process holds the lock
    and its Weaviate answers. None otherwise, as for a file a stack killed outright left."""
    record = published_record(data_dir)
    if record is None:
        return None
    try:
        pid = int(record["pid"])
        endpoints = Endpoints.from_record(record)
    except (KeyError, TypeError, ValueError):
        return None
    if lock_holder(data_dir) != pid or not weaviate_ready(endpoints.weaviate_http):
        return None
    return record


def busy_message(data_dir: Path, shown: str) -> str:
    """Why no stack can start on ``data_dir`` (another process holds its lock), and what to do."""
    pid = lock_holder(data_dir) or 0
    who = process_line(pid)
    stop = f"stop it (kill {pid})" if pid else "stop it"
    record = published_record(data_dir)
    if record is not None and record.get("pid") == pid:
        url = record.get("weaviate_http", "?")
        if weaviate_ready(url):
            return (
                f"{shown} is in use by the running stack of {who} at {url}: ib-query, ib-ingest, "
                f"ib-tag and ib-search with --data-dir {shown} use it; {stop} to start another"
            )
        return (
            f"{shown} is held by the stack of {who}, whose Weaviate at {url} does not answer "
            f"now (restarting?): try again in a moment, or {stop}"
        )
    return (
        f"{shown} is held by {who}, whose stack is still starting or serves that command "
        f"alone: wait for it, or {stop}; to share one stack, keep `ib-stack --data-dir {shown}` "
        "running"
    )


def write_atomically(path: Path, text: str) -> None:
    """Readers see the old file or the new one, never half of it."""
    partial_path = path.with_name(f".{path.name}.{os.getpid()}")
    partial_path.write_text(text)
    os.replace(partial_path, path)


def weights_of(model: ModelOptions) -> dict:
    """What decides the vectors a model makes: a command that embeds on its own must use the
    same as the stack's vectorizer, or its vectors and Weaviate's do not compare."""

    def absolute(path: str | None) -> str | None:
        if path is None or has_scheme(path) or not Path(path).expanduser().exists():
            return path
        return str(Path(path).expanduser().resolve())

    return {
        "model": absolute(model.model),
        "checkpoint": absolute(model.checkpoint),
        "random_weights": model.random_weights,
    }


class WeaviateNode:
    """One Weaviate process of the stack: its name, ports, data directory and log.

    Its HTTP and gRPC APIs listen on ``host``; clients on this machine reach them
    at :attr:`address` (127.0.0.1 when ``host`` is 0.0.0.0).
    """

    home = "on its ports and data"  # where a restart brings it back

    def __init__(
        self, name: str, ports: NodePorts, data_path: Path, log_path: Path, host: str = LOOPBACK
    ) -> None:
        self.name = name
        self.ports = ports
        self.data_path = data_path
        self.log_path = log_path
        self.host = host
        self.process: subprocess.Popen | None = None

    @property
    def label(self) -> str:
        """How logs and messages name it: its log file's name (weaviate, weaviate-node2)."""
        return self.log_path.stem

    @property
    def address(self) -> str:
        return LOOPBACK if self.host == "0.0.0.0" else self.host

    @property
    def http_url(self) -> str:
        return f"http://{self.address}:{self.ports.http}"

    @property
    def pid(self) -> int:
        return self.process.pid if self.process is not None else 0

    def endpoint(self) -> NodeEndpoint:
        return NodeEndpoint(self.name, self.http_url, self.ports.grpc, self.pid)

    def describe(self) -> str:
        return self.endpoint().line()

    def start(self, binary: Path, env: dict[str, str]) -> None:
        command = [str(binary), "--host", self.host, "--port", str(self.ports.http)]
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
                self.http_url + WEAVIATE_READY_PATH,
                ready_status,
                f"weaviate {self.name}",
                self.log_path,
            )
        except ServerStartError as err:
            raise StackError(str(err)) from None

    def answers_ready(self) -> bool:
        return weaviate_ready(self.http_url, timeout=1.0)

    def exit_code(self) -> int | None:
        """None while it runs (or before it first started)."""
        return None if self.process is None else self.process.poll()

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


def wait_nodes_ready(nodes: list[WeaviateNode], timeout_s: float = READY_TIMEOUT_S) -> None:
    """Wait until every node answers ready; a node that exits fails the start at once.

    The others would otherwise wait for it until the deadline: a cluster's nodes
    are ready only once Raft has all of them.
    """
    deadline = time.monotonic() + timeout_s
    waiting = list(nodes)
    while waiting:
        for node in list(waiting):
            code = node.exit_code()
            if code is not None:
                raise StackError(
                    f"weaviate {node.name} exited with status {code} during start-up; "
                    f"its output ends with:\n{tail(node.log_path)}"
                )
            if node.answers_ready():
                waiting.remove(node)
        if waiting and time.monotonic() > deadline:
            names = ", ".join(node.name for node in waiting)
            raise StackError(
                f"weaviate {names} not ready after {timeout_s:g} s; the output of "
                f"{waiting[0].name} ends with:\n{tail(waiting[0].log_path)}"
            )
        time.sleep(0.1)


class Vectorizer:
    """Our inference server as a part of the stack: one port for its whole life, restarts too."""

    label = "vectorizer"
    home = "on its port"

    def __init__(self, env: dict[str, str], log_path: Path, port: int) -> None:
        self.env = env
        self.log_path = log_path
        self.port = port
        self.url = f"http://{LOOPBACK}:{port}"
        self.server: ServerProcess | None = None

    @property
    def pid(self) -> int:
        process = self.server.process if self.server is not None else None
        return process.pid if process is not None else 0

    def describe(self) -> str:
        return f"{self.url} pid {self.pid}"

    def start(self) -> None:
        self.server = ServerProcess(
            self.env, log_path=self.log_path, port=self.port, name=self.label
        ).start()

    def wait_ready(self) -> None:
        try:
            self.server.wait_ready()
        except ServerStartError as err:
            raise StackError(str(err)) from None

    def answers_ready(self) -> bool:
        return http_status(self.url + READY_PATH, timeout=1.0) == 204

    def exit_code(self) -> int | None:
        return None if self.server is None else self.server.exit_code()

    def running(self) -> bool:
        return self.server is not None and self.server.exit_code() is None

    def stop(self) -> None:
        server, self.server = self.server, None
        if server is not None:
            server.stop(STOP_TIMEOUT_S)


@dataclass
class Lifeline:
    """One part under supervision: how to start it again, and how it has fared since."""

    part: WeaviateNode | Vectorizer
    launch: Callable[[], None]
    started_at: float = field(default_factory=time.monotonic)
    quick_deaths: int = 0  # in a row, each within STABLE_S of a start
    restart_due: float | None = None  # set while it is dead and waiting for its restart
    starting: bool = False  # restarted, not yet answering
    abandoned: bool = False

    def launched(self) -> None:
        self.launch()
        self.started_at = time.monotonic()
        self.restart_due = None
        self.starting = True


class LocalStack:
    """``with LocalStack(data_dir, ModelOptions(...), nodes=3) as stack: stack.client()``

    ``nodes`` Weaviate processes form one cluster on this host the way
    Weaviate's own development script does it (``CLUSTER_IN_LOCALHOST``, a
    gossip/data/Raft/gRPC/HTTP port set and a data directory per node, every
    node in ``RAFT_JOIN``); each has ``multi2vec-bind`` pointed at our one
    inference server. A cluster keeps its ports in ``cluster/layout.json`` of
    the data directory, so a restart brings the same cluster back.

    ``host`` is where Weaviate's HTTP and gRPC APIs listen (127.0.0.1 unless
    given; another address needs ``api_key``). :attr:`api_key` is the key
    Weaviate requires after :meth:`start`, or None when it needs none.

    ``port`` and ``grpc_port`` are node 1's HTTP and gRPC ports (taken ones
    refused); without them node 1 takes free ports, or with
    ``prefer_usual_ports`` Weaviate's own 8080 and 50051 when both are free, so
    ``weaviate.connect_to_local()`` finds it. Every other port is a free one.

    One stack at a time runs on a data directory (:class:`DataDirLock`).
    ``publish`` writes :data:`ENDPOINTS_FILE` there while it runs, for other
    commands to use this stack (:func:`stack_for`); only a stack that outlives
    them (``ib-stack``) should publish.
    """

    def __init__(
        self,
        data_dir: str | Path | None = None,
        model: ModelOptions | None = None,
        vectorizer_env: dict[str, str] | None = None,
        weaviate_version: str = WEAVIATE_VERSION,
        weaviate_binary: Path | None = None,
        nodes: int = 1,
        host: str = LOOPBACK,
        api_key: str | None = None,
        port: int | None = None,
        grpc_port: int | None = None,
        prefer_usual_ports: bool = False,
        publish: bool = False,
    ) -> None:
        if nodes < 1:
            raise StackError(f"a stack needs at least one Weaviate node, not {nodes}")
        check_host(host, api_key)
        self.data_dir = Path(data_dir) if data_dir else default_data_dir()
        self.shown_dir = str(data_dir) if data_dir else str(self.data_dir)  # as the user said it
        self.model = model or ModelOptions()
        self.vectorizer_env = vectorizer_env or {}
        self.weaviate_version = weaviate_version
        self.weaviate_binary = weaviate_binary or embedded_binary_path(weaviate_version)
        self.node_count = nodes
        self.host = host
        self.api_key = api_key
        self.port = port
        self.grpc_port = grpc_port
        self.prefer_usual_ports = prefer_usual_ports
        self.publish = publish
        self.nodes: list[WeaviateNode] = []
        self.endpoints: Endpoints | None = None
        self.start_s: float | None = None  # how long the last start took
        self._key_stored = False  # the key is the one in api_key_path
        self._lock: DataDirLock | None = None
        self._vectorizer: Vectorizer | None = None
        self._lifelines: list[Lifeline] = []

    # ------------------------------------------------------------------ life cycle

    def start(self) -> Endpoints:
        """Start every part and wait until each is ready; StackBusy if another stack holds the
        data directory, StackError if a part cannot start (then nothing is left running)."""
        started = time.monotonic()
        if not self.weaviate_binary.exists():
            raise StackError(
                f"no Weaviate binary at {self.weaviate_binary}; run `make setup` "
                "(or `python -m pipelines.provision`) to provision it"
            )
        self.data_dir.mkdir(parents=True, exist_ok=True)
        lock = DataDirLock(self.data_dir, self.shown_dir)
        lock.acquire()
        self._lock = lock
        try:
            self.endpoints_path.unlink(missing_ok=True)  # left by a stack killed outright
            (self.data_dir / "logs").mkdir(exist_ok=True)
            self._check_binary_build()
            self.nodes = self._plan_nodes()  # a port taken is refused before anything starts
            log.info("starting the local stack on %s (%s)…", self.shown_dir, self._parts())
            taken = set().union(*(node.ports.all() for node in self.nodes))
            self._vectorizer = self._new_vectorizer(free_port_block(1, taken))
            self._vectorizer.start()
            self._vectorizer.wait_ready()
            for node in self.nodes:
                self._start_node(node)
            wait_nodes_ready(self.nodes)  # they start together: Raft waits for all of them
            self._lifelines = [
                Lifeline(node, partial(self._start_node, node)) for node in self.nodes
            ]
            self._lifelines.append(Lifeline(self._vectorizer, self._vectorizer.start))
            self.endpoints = self._endpoints()
            if self.publish:
                self._publish()
        except BaseException:
            self.stop()
            raise
        self.start_s = time.monotonic() - started
        log.info(
            "the local stack on %s is ready in %.1f s: Weaviate at %s",
            self.shown_dir,
            self.start_s,
            self.endpoints.weaviate_http,
        )
        return self.endpoints

    def stop(self) -> None:
        """Unpublish, then Weaviate (it may still call the vectorizer), then the vectorizer;
        the data directory is free for the next stack once they are gone."""
        if self._lock is not None:
            self.endpoints_path.unlink(missing_ok=True)
        for node in self.nodes:
            node.stop()
        vectorizer, self._vectorizer = self._vectorizer, None
        if vectorizer is not None:
            vectorizer.stop()
        self._lifelines = []
        self.endpoints = None
        lock, self._lock = self._lock, None
        if lock is not None:
            lock.release()

    def _check_binary_build(self) -> None:
        """A Weaviate that is not our build runs behind an API key (the given one, else the
        data directory's)."""
        if has_listen_address_edits(self.weaviate_binary):
            return
        if self.api_key is None:
            self.api_key = self._stored_api_key()
            self._key_stored = True
            which = f"the API key in {self.api_key_path}"
        else:
            which = "the API key given"
        log.warning(
            "%s is not our build: its gRPC and cluster APIs listen on every interface, so "
            "Weaviate requires %s (`make setup` with Go builds one that keeps them on "
            "127.0.0.1)",
            self.weaviate_binary,
            which,
        )

    def _parts(self) -> str:
        """``Weaviate 1.38.11, the inference server``: what a start starts, for its log line."""
        nodes = "" if self.node_count == 1 else f" ({self.node_count} nodes)"
        return f"Weaviate {self.weaviate_version}{nodes}, the inference server"

    @property
    def endpoints_path(self) -> Path:
        return self.data_dir / ENDPOINTS_FILE

    def _publish(self) -> None:
        """Write where this stack answers, and how to use it, for :func:`stack_for`."""
        record = {
            "pid": os.getpid(),
            "data_dir": str(self.data_dir.resolve()),
            "weaviate_version": self.weaviate_version,
            **self.endpoints.as_record(),
            "api_key_required": self.api_key is not None,
            "api_key_file": str(self.api_key_path.resolve()) if self._key_stored else None,
            "model": weights_of(self.model),
        }
        write_atomically(self.endpoints_path, json.dumps(record, indent=1) + "\n")

    def supervise(self) -> str | None:
        """Start again, each after its wait, the parts that died; say why the stack cannot go on.

        Returns None while it can; a reason once every Weaviate node, or the
        vectorizer, kept dying (see RESTART_DELAYS_S). Call it about once a
        second from the thread that started the stack: children get SIGTERM
        when the thread that started them ends.
        """
        if self.endpoints is None:
            raise StackError("the stack is not running")
        now = time.monotonic()
        for life in self._lifelines:
            part = life.part
            if life.abandoned:
                continue
            if life.restart_due is not None:
                if now >= life.restart_due:
                    try:
                        life.launched()
                    except (OSError, ServerStartError) as err:
                        self._note_death(life, f"could not start again: {err}", now)
                    else:
                        log.info("%s restarted (pid %d)", part.label, part.pid)
                continue
            code = part.exit_code()
            if code is not None:
                output = "" if code < 0 else f"; its log ends with:\n{tail(part.log_path, 3)}"
                self._note_death(life, f"pid {part.pid} exited, {exit_reason(code)}", now, output)
            elif life.starting and part.answers_ready():
                life.starting = False
                log.info("%s is back: %s", part.label, part.describe())
        endpoints = self._endpoints()
        if endpoints != self.endpoints:  # a part came back as another process
            self.endpoints = endpoints
            if self.publish:
                self._publish()
        nodes = [life for life in self._lifelines if isinstance(life.part, WeaviateNode)]
        if all(life.abandoned for life in nodes):
            return "every Weaviate node kept dying"
        if any(life.abandoned for life in self._lifelines if life not in nodes):
            return "the vectorizer kept dying"
        return None

    def _note_death(self, life: Lifeline, how: str, now: float, output: str = "") -> None:
        """Log how a part died, and either schedule its restart or give it up."""
        quick = now - life.started_at < STABLE_S
        life.quick_deaths = life.quick_deaths + 1 if quick else 1
        life.starting = False
        label = life.part.label
        if life.quick_deaths > len(RESTART_DELAYS_S):
            life.abandoned = True
            log.error(
                "%s died (%s), %d times in a row within %g s of a start: not starting it again%s",
                label, how, life.quick_deaths, STABLE_S, output,
            )  # fmt: skip
            return
        delay = RESTART_DELAYS_S[life.quick_deaths - 1]
        life.restart_due = now + delay
        log.error(
            "%s died (%s); restarting it in %g s %s%s", label, how, delay, life.part.home, output
        )

    def kill_node(self, number: int) -> None:
        """``kill -9`` Weaviate node ``number`` (1-based), as a crash would."""
        self._node(number).kill()

    def restart_node(self, number: int) -> None:
        """Start node ``number`` again on its ports and data, and wait until it is ready."""
        node = self._node(number)
        node.stop()
        life = next(life for life in self._lifelines if life.part is node)
        life.abandoned, life.quick_deaths = False, 0
        life.launched()
        node.wait_ready()
        life.starting = False
        self.endpoints = self._endpoints()

    def __enter__(self) -> LocalStack:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def client(self, node: int = 1):
        """A weaviate-client v4 connection to node ``node`` (1-based; close it when done)."""
        import weaviate
        from weaviate.classes.init import Auth

        if self.endpoints is None:
            raise StackError("the stack is not running")
        chosen = self._node(node)
        return weaviate.connect_to_local(
            host=chosen.address,
            port=chosen.ports.http,
            grpc_port=chosen.ports.grpc,
            auth_credentials=Auth.api_key(self.api_key) if self.api_key else None,
        )

    def pids(self) -> dict[str, int]:
        """The process id of every Weaviate node and of the inference server, while running."""
        parts = [*self.nodes, *([self._vectorizer] if self._vectorizer else [])]
        return {part.label: part.pid for part in parts if part.running()}

    @property
    def api_key_path(self) -> Path:
        """Where the stack keeps the API key it makes itself (mode 0600)."""
        return self.data_dir / "api-key"

    def log_path(self, name: str) -> Path:
        return self.data_dir / "logs" / f"{name}.log"

    def log_tail(self, name: str, lines: int = 30) -> str:
        return tail(self.log_path(name), lines)

    # ------------------------------------------------------------------ parts

    def _node(self, number: int) -> WeaviateNode:
        if not 1 <= number <= len(self.nodes):
            raise StackError(f"no Weaviate node {number}: the stack has {len(self.nodes)}")
        return self.nodes[number - 1]

    def _endpoints(self) -> Endpoints:
        first = self.nodes[0]
        nodes = tuple(node.endpoint() for node in self.nodes)
        return Endpoints(first.http_url, first.ports.grpc, self._vectorizer.url, nodes)

    def _stored_api_key(self) -> str:
        """The data directory's key, made (random, readable by its owner only) the first time."""
        path = self.api_key_path
        try:
            handle = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            path.chmod(0o600)
            key = path.read_text().strip()
            if not key:
                raise StackError(f"{path} is empty: remove it, and a new key is made") from None
            return key
        with os.fdopen(handle, "w") as key_file:
            key = secrets.token_urlsafe(32)
            key_file.write(key + "\n")
        return key

    def _plan_nodes(self) -> list[WeaviateNode]:
        """One node on fresh ports; a cluster on the ports its data directory remembers."""
        if self.node_count == 1:
            ports = self._first_node_ports()
            path = self.data_dir / "weaviate"
            return [WeaviateNode("node1", ports, path, self.log_path("weaviate"), self.host)]
        root = self.data_dir / "cluster"
        layout = root / "layout.json"
        if layout.exists():
            saved = json.loads(layout.read_text())
            if saved["nodes"] != self.node_count:
                raise StackError(
                    f"{self.data_dir} holds a {saved['nodes']}-node cluster; start it with "
                    f"--nodes {saved['nodes']}, or use another --data-dir"
                )
            all_ports = [NodePorts(p["http"], p["grpc"], p["gossip"]) for p in saved["ports"]]
            first = all_ports[0]
            asked = (("--port", self.port, first.http), ("--grpc-port", self.grpc_port, first.grpc))
            other = [f"{flag} {want}" for flag, want, have in asked if want not in (None, have)]
            if other:
                raise StackError(
                    f"the cluster in {self.data_dir} keeps node 1 on HTTP port {first.http} and "
                    f"gRPC port {first.grpc} (cluster/layout.json): drop {' and '.join(other)}, "
                    "or use another --data-dir"
                )
            busy = sorted(p for ports in all_ports for p in ports.all() if not port_free(p))
            if busy:
                raise StackError(
                    f"the cluster in {self.data_dir} uses ports {busy}, which something else "
                    "holds now; stop it (another ib-stack?) and start again"
                )
        else:
            all_ports = [self._first_node_ports()]
            taken = all_ports[0].all()
            for _ in range(self.node_count - 1):
                all_ports.append(fresh_node_ports(taken))
                taken |= all_ports[-1].all()
            root.mkdir(parents=True, exist_ok=True)
            layout.write_text(
                json.dumps({"nodes": self.node_count, "ports": [vars(p) for p in all_ports]})
            )
        return [
            WeaviateNode(
                f"node{k}", ports, root / f"node{k}", self.log_path(f"weaviate-node{k}"), self.host
            )
            for k, ports in enumerate(all_ports, start=1)
        ]

    def _first_node_ports(self) -> NodePorts:
        """Node 1's HTTP and gRPC ports as given, else the usual ones if asked for and free,
        else free ones; its cluster ports are free ones."""
        given = (("--port", self.port), ("--grpc-port", self.grpc_port))
        taken = [f"{flag} {port}" for flag, port in given if port and not self._free(port)]
        if taken:
            raise StackError(
                f"{' and '.join(taken)}: taken by another program (another stack?); stop it, or "
                "choose another port"
            )
        http, grpc = self.port, self.grpc_port
        if self.prefer_usual_ports and (http is None or grpc is None):
            wanted = [
                usual for port, usual in zip((http, grpc), USUAL_PORTS, strict=True) if not port
            ]
            busy = [str(usual) for usual in wanted if not self._free(usual)]
            if busy:
                which = (
                    f"port {busy[0]} is" if len(busy) == 1 else f"ports {' and '.join(busy)} are"
                )
                log.info(
                    "%s taken, so Weaviate listens on free ports (choose them with --port and "
                    "--grpc-port)",
                    which,
                )
            else:
                http, grpc = http or USUAL_PORTS[0], grpc or USUAL_PORTS[1]
        return fresh_node_ports(set(), http, grpc)

    def _free(self, port: int) -> bool:
        """Whether Weaviate could listen on ``port`` of ``host`` now."""
        return port_free(port, self.host)

    def _new_vectorizer(self, port: int) -> Vectorizer:
        env = {**as_env(self.model), **self.vectorizer_env}
        return Vectorizer(env, self.log_path("vectorizer"), port)

    def _start_node(self, node: WeaviateNode) -> None:
        node.start(self.weaviate_binary, {**self._weaviate_env(), **self._node_env(node)})

    def _weaviate_env(self) -> dict[str, str]:
        """What every node shares: the module wired to our server, the embedded mode's settings,
        the listen addresses, and the API key if there is one."""
        env = {
            **os.environ,
            "AUTHENTICATION_ANONYMOUS_ACCESS_ENABLED": "true",
            "DEFAULT_VECTORIZER_MODULE": "none",
            "ENABLE_MODULES": "multi2vec-bind",
            "BIND_INFERENCE_API": self._vectorizer.url,
            "CLUSTER_IN_LOCALHOST": "true",
            "RAFT_BOOTSTRAP_EXPECT": str(self.node_count),
            "RAFT_JOIN": ",".join(f"{n.name}:{n.ports.raft}" for n in self.nodes),
            "DISABLE_TELEMETRY": "true",
            "QUERY_DEFAULTS_LIMIT": "20",
            "LOG_LEVEL": os.environ.get("WEAVIATE_LOG_LEVEL", "warning"),
            # Where gossip, Raft and the cluster API listen, and the public gRPC API; the
            # cluster API and gRPC follow these in our build only (see pipelines.provision).
            "CLUSTER_BIND_ADDR": LOOPBACK,
            "GRPC_BIND_ADDR": self.host,
            "GO_PROFILING_DISABLE": "true",  # the profiler would listen on every interface
            "PROMETHEUS_MONITORING_ENABLED": "false",  # so would the metrics endpoint
        }
        if self.api_key:
            env |= {
                "AUTHENTICATION_ANONYMOUS_ACCESS_ENABLED": "false",
                "AUTHENTICATION_APIKEY_ENABLED": "true",
                "AUTHENTICATION_APIKEY_ALLOWED_KEYS": self.api_key,
                "AUTHENTICATION_APIKEY_USERS": API_KEY_USER,
                "CLUSTER_BASIC_AUTH_USERNAME": API_KEY_USER,
                "CLUSTER_BASIC_AUTH_PASSWORD": self.api_key,
            }
        return env

    def _node_env(self, node: WeaviateNode) -> dict[str, str]:
        """One node's name, ports and data; it joins the gossip of every other node running."""
        env = {
            "PERSISTENCE_DATA_PATH": str(node.data_path),
            "GRPC_PORT": str(node.ports.grpc),
            "CLUSTER_HOSTNAME": node.name,
            "CLUSTER_GOSSIP_BIND_PORT": str(node.ports.gossip),
            "CLUSTER_DATA_BIND_PORT": str(node.ports.data),
            "RAFT_PORT": str(node.ports.raft),
            "RAFT_INTERNAL_RPC_PORT": str(node.ports.raft_rpc),
        }
        others = [n for n in self.nodes if n is not node and n.running()]
        if others:
            env["CLUSTER_JOIN"] = ",".join(f"{LOOPBACK}:{n.ports.gossip}" for n in others)
        return env


# ---------------------------------------------------------------------------- find or start


@dataclass(frozen=True)
class StackAccess:
    """The stack a command uses: where it answers, the key its Weaviate needs (None: none),
    and the seconds this command spent starting it (None: it was running already)."""

    endpoints: Endpoints
    api_key: str | None
    start_s: float | None = None

    @property
    def nodes(self) -> list[tuple[str, int]]:
        """Every Weaviate node as (HTTP URL, gRPC port), node 1 first."""
        return [(node.http, node.grpc_port) for node in self.endpoints.nodes]


@contextmanager
def stack_for(
    data_dir: str | Path | None,
    model: ModelOptions,
    api_key: str | None = None,
    embeds_here: bool = False,
) -> Iterator[StackAccess]:
    """The stack on ``data_dir`` for one command: the running ``ib-stack`` there if there is
    one, else one started here and stopped on exit.

    ``api_key``: the command's key, for a stack whose Weaviate requires the key it was
    given. ``embeds_here``: the command embeds with ``model`` itself, which must then be
    the model of the running stack's vectorizer. A data directory that a live stack holds
    but that cannot be used (still starting, not answering) is StackBusy.
    """
    path = Path(data_dir) if data_dir else default_data_dir()
    shown = str(data_dir) if data_dir else str(path)
    record = running_stack(path)
    if record is not None:
        yield attach(record, shown, model, api_key, embeds_here)
        return
    check_checkpoint(model)
    with LocalStack(data_dir, model) as stack:
        yield StackAccess(stack.endpoints, stack.api_key, stack.start_s)


def attach(
    record: dict, shown: str, model: ModelOptions, api_key: str | None, embeds_here: bool
) -> StackAccess:
    """Access to the running stack ``record`` describes; CommandError if this command cannot
    use it (another model, no key)."""
    pid = record["pid"]
    theirs, ours = record.get("model") or {}, weights_of(model)
    if embeds_here and theirs != ours:
        differ = [key for key in ours if theirs.get(key) != ours[key]]
        raise CommandError(
            f"the running stack on {shown} (pid {pid}) embeds with "
            f"{weights_line(theirs, differ)}, this command with {weights_line(ours, differ)}: "
            "give this command the stack's model (--model, --checkpoint, --random-weights), or "
            "stop the stack"
        )
    key = None
    if record.get("api_key_file"):
        try:
            key = Path(record["api_key_file"]).read_text().strip()
        except OSError as err:
            raise CommandError(
                f"cannot read the running stack's API key {record['api_key_file']} "
                f"({err.strerror}): pass it with --weaviate-api-key or $WEAVIATE_API_KEY"
            ) from None
    elif record.get("api_key_required"):
        key = api_key
        if not key:
            raise CommandError(
                f"the running stack on {shown} (pid {pid}) requires the API key it was started "
                "with: pass it with --weaviate-api-key or $WEAVIATE_API_KEY"
            )
    endpoints = Endpoints.from_record(record)
    log.info("using the running stack on %s: %s (pid %d)", shown, endpoints.weaviate_http, pid)
    return StackAccess(endpoints, key)


def weights_line(weights: dict, keys: list[str]) -> str:
    """``model tiny.json, random weights``: the ``keys`` of :func:`weights_of` for a message."""
    words = {
        "model": f"model {weights.get('model')}",
        "checkpoint": f"weights {weights.get('checkpoint') or '(the default)'}",
        "random_weights": "random weights" if weights.get("random_weights") else "its weights",
    }
    return ", ".join(words[key] for key in keys if key in words)


def exit_reason(code: int) -> str:
    """A child's exit status as words: ``status 1``, ``killed by SIGKILL``."""
    if code >= 0:
        return f"status {code}"
    try:
        return f"killed by {signal.Signals(-code).name}"
    except ValueError:
        return f"killed by signal {-code}"


def fresh_node_ports(
    taken: set[int], http: int | None = None, grpc: int | None = None, attempts: int = 50
) -> NodePorts:
    """Ports for one Weaviate node, free now and none of them in ``taken``; ``http`` and
    ``grpc`` as given when given."""
    for _ in range(attempts):
        free_http, free_grpc = free_ports(2)
        chosen = (http or free_http, grpc or free_grpc)
        if chosen[0] != chosen[1] and not taken & set(chosen):
            gossip = free_port_block(4, taken | set(chosen))
            return NodePorts(*chosen, gossip)
    raise StackError("found no free ports for a Weaviate node")


# ---------------------------------------------------------------------------- ib-stack


def build_parser() -> CommandParser:
    parser = CommandParser(
        prog="ib-stack",
        description="Run our inference server plus a Weaviate wired to it as its multi2vec-bind "
        "vectorizer, until Ctrl-C or SIGTERM. Prints the endpoints, one per line, and keeps them "
        "in DATA_DIR/endpoints.json, where ib-query, ib-ingest, ib-tag and ib-search find and "
        "use this stack. A part that dies is started again on its ports and data.",
    )
    parser.add_argument("--data-dir", default=None, help="where Weaviate keeps its data and logs")
    parser.add_argument(
        "--nodes",
        type=int,
        default=1,
        help="Weaviate nodes forming one cluster on this host (default 1)",
    )
    parser.add_argument(
        "--host",
        default=LOOPBACK,
        help="where Weaviate's HTTP and gRPC APIs listen (default 127.0.0.1; 0.0.0.0: every "
        "interface); anything beyond loopback needs --api-key",
    )
    parser.add_argument(
        "--api-key",
        default=os.environ.get("WEAVIATE_API_KEY") or None,
        help="the API key Weaviate then requires (default: $WEAVIATE_API_KEY; none: Weaviate "
        "answers anyone on this machine)",
    )
    parser.add_argument(
        "--port",
        type=int,
        help="Weaviate's HTTP port (node 1's; default 8080 when it and 50051 are free, else a "
        "free one)",
    )
    parser.add_argument(
        "--grpc-port",
        type=int,
        help="Weaviate's gRPC port (node 1's; default 50051 when it and 8080 are free, else a "
        "free one)",
    )
    add_flags(parser.add_argument_group("the inference server's model"), ModelOptions)
    return parser


def check_ports(port: int | None, grpc_port: int | None) -> None:
    for flag, value in (("--port", port), ("--grpc-port", grpc_port)):
        if value is not None and not 1 <= value <= 65535:
            raise CommandError(f"{flag} {value} is not a port (1 to 65535)")
    if port is not None and port == grpc_port:
        raise CommandError(f"--port and --grpc-port are both {port}: give two ports")


def main(argv: Sequence[str] | None = None) -> int:
    console_logging()
    args = build_parser().parse_args(argv)
    try:
        if args.nodes < 1:
            raise CommandError(f"--nodes must be 1 or more, not {args.nodes}")
        check_ports(args.port, args.grpc_port)
        model = from_sources(ModelOptions, args)
        check_checkpoint(model)
        stack = LocalStack(
            args.data_dir,
            model,
            nodes=args.nodes,
            host=args.host,
            api_key=args.api_key,
            port=args.port,
            grpc_port=args.grpc_port,
            prefer_usual_ports=True,
            publish=True,
        )
        # Until both are ready, Ctrl-C interrupts start() itself, which stops what it started.
        with stack:
            stop = threading.Event()
            for signum in (signal.SIGTERM, signal.SIGINT):
                signal.signal(signum, lambda *_: stop.set())
            for line in stack.endpoints.lines():
                print(line, flush=True)
            log.info(
                "endpoints in %s: ib-query, ib-ingest, ib-tag and ib-search with --data-dir %s "
                "use this stack",
                stack.endpoints_path,
                stack.shown_dir,
            )
            while not stop.wait(1.0):
                problem = stack.supervise()
                if problem:
                    log.error("%s; stopping the stack", problem)
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
