"""``ib-stack`` run as a user runs it, and what /proc says about its processes.

The sockets a process listens on come from /proc/PID/net/{tcp,tcp6,udp,udp6}
matched to the socket inodes in /proc/PID/fd, so no tool (``ss``, ``lsof``)
is needed. A listening socket is a TCP one in state LISTEN or a UDP one bound
and not connected.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from .server_process import TINY_ENV


def console_script(entry_point: str) -> list[str]:
    """The command line of a console script (``pipelines.stack:main``), run from the package
    this test imports: the script in the venv imports the installed one, which in a git
    worktree is another checkout's."""
    module, function = entry_point.split(":")
    code = f"import sys; from {module} import {function}; sys.exit({function}())"
    return [sys.executable, "-c", code]


IB_STACK = console_script("pipelines.stack:main")
TCP_LISTEN = "0A"
UDP_UNCONNECTED = "07"
NODE_LINE = re.compile(r"weaviate node (\d+): http://([\d.]+):(\d+) grpc [\d.]+:(\d+) pid (\d+)")


@dataclass(frozen=True)
class Listener:
    """One listening socket: which process, TCP or UDP, on which address and port."""

    pid: int
    protocol: str
    address: str
    port: int


def _address(hex_address: str, family: int) -> tuple[str, int]:
    """/proc/net's ``0100007F:1F90`` (the address in 32-bit host-order words) as text and port."""
    hex_ip, hex_port = hex_address.split(":")
    raw = bytes.fromhex(hex_ip)
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    return socket.inet_ntop(family, words), int(hex_port, 16)


def _socket_inodes(pid: int) -> set[int]:
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:  # closed meanwhile
            continue
        if target.startswith("socket:["):
            inodes.add(int(target[len("socket:[") : -1]))
    return inodes


def listening_sockets(pid: int) -> list[Listener]:
    """Every socket process ``pid`` listens on, TCP and UDP, IPv4 and IPv6."""
    inodes = _socket_inodes(pid)
    found = []
    for table, family, listening in (
        ("tcp", socket.AF_INET, TCP_LISTEN),
        ("tcp6", socket.AF_INET6, TCP_LISTEN),
        ("udp", socket.AF_INET, UDP_UNCONNECTED),
        ("udp6", socket.AF_INET6, UDP_UNCONNECTED),
    ):
        for row in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            fields = row.split()
            local, state, inode = fields[1], fields[3], int(fields[9])
            if inode in inodes and state == listening:
                address, port = _address(local, family)
                found.append(Listener(pid, table.rstrip("6"), address, port))
    return found


def parent_of(pid: int) -> int | None:
    """The parent pid of ``pid`` from /proc/PID/stat; None once it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[1])


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (children, their children, ...), from /proc/*/stat."""
    parents = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (parent := parent_of(int(entry))) is not None:
            parents[int(entry)] = parent
    found, frontier = [], [pid]
    while frontier:
        children = [child for child, parent in parents.items() if parent in frontier]
        found += children
        frontier = children
    return found


def processes_with_environment(name: str, value: str) -> dict[int, str]:
    """Live processes whose environment has ``name=value``, with their command lines.

    A child inherits its parent's environment, so this finds what a process
    started even after it was re-parented to init (an orphan left behind).
    """
    wanted = f"{name}={value}".encode()
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            environment = Path(f"/proc/{entry}/environ").read_bytes().split(b"\0")
            command = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        if wanted in environment and alive(int(entry)):
            found[int(entry)] = command.replace(b"\0", b" ").decode(errors="replace").strip()
    return found


def alive(pid: int) -> bool:
    """Whether ``pid`` still exists as a process that is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@dataclass(frozen=True)
class NodeLine:
    """One ``weaviate node K: ...`` line of ib-stack's output."""

    number: int
    address: str
    http_port: int
    grpc_port: int
    pid: int

    @classmethod
    def parse(cls, line: str) -> NodeLine:
        number, address, http, grpc, pid = NODE_LINE.search(line).groups()
        return cls(int(number), address, int(http), int(grpc), int(pid))


class StackCommand:
    """``with StackCommand(data_dir, nodes=3) as stack: stack.nodes``

    The real ``ib-stack`` (:data:`IB_STACK`, tiny model) as a subprocess: its
    endpoint lines read, its log (stderr) in a file. On exit it is stopped with
    SIGTERM, and everything it started is checked to be gone.
    """

    def __init__(
        self,
        data_dir: Path,
        nodes: int = 1,
        flags: tuple[str, ...] = (),
        env: dict[str, str] | None = None,
    ) -> None:
        self.data_dir = data_dir
        self.node_count = nodes
        self.flags = ("--nodes", str(nodes), *flags)
        self.env = {**os.environ, **TINY_ENV, **(env or {})}
        self.log_path = data_dir.with_name(data_dir.name + "-ib-stack.log")
        self.process: subprocess.Popen | None = None
        self.lines: list[str] = []
        self.started: set[int] = set()  # every pid seen below ib-stack

    def __enter__(self) -> StackCommand:
        command = [*IB_STACK, "--data-dir", str(self.data_dir), *self.flags]
        with self.log_path.open("w") as log:
            self.process = subprocess.Popen(
                command, stdout=subprocess.PIPE, stderr=log, text=True, env=self.env
            )
        try:
            for _ in range(3 + self.node_count):  # node 1, the vectorizer, every node
                line = self.process.stdout.readline()
                assert line, f"ib-stack ended its output early:\n{self.log()[-3000:]}"
                self.lines.append(line.rstrip("\n"))
            self.pids()
        except BaseException:
            self.__exit__()
            raise
        return self

    @property
    def nodes(self) -> list[NodeLine]:
        return [NodeLine.parse(line) for line in self.lines if NODE_LINE.search(line)]

    @property
    def vectorizer_url(self) -> str:
        return self.lines[2].split(": ", 1)[1]

    def pids(self) -> list[int]:
        """ib-stack and every process below it, now."""
        found = [self.process.pid, *descendants(self.process.pid)]
        self.started |= set(found)
        return found

    def log(self) -> str:
        return self.log_path.read_text()

    def wait_for_log(self, pattern: str, after: int = 0, timeout_s: float = 300) -> re.Match:
        """The first match of ``pattern`` in the log past offset ``after``, waited for."""
        deadline = time.monotonic() + timeout_s
        while True:
            found = re.compile(pattern).search(self.log(), after)
            if found:
                return found
            assert self.process.poll() is None, f"ib-stack exited:\n{self.log()[-3000:]}"
            assert time.monotonic() < deadline, f"no {pattern!r} in the log:\n{self.log()[-3000:]}"
            time.sleep(0.2)

    def terminate(self) -> int:
        """SIGTERM, as a user or a service manager stops it; its exit status."""
        self.pids()
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=120)

    def __exit__(self, *exc: object) -> None:
        if self.process.poll() is None:
            self.terminate()
        self.process.stdout.close()
        left = [pid for pid in self.started if alive(pid)]
        for pid in left:  # never leave one behind, even when a test failed
            os.kill(pid, signal.SIGKILL)
        assert not left, f"processes left behind by ib-stack: {left}"


def cluster_layout(data_dir: Path) -> list[dict[str, int]]:
    """The ports a cluster's data directory keeps (cluster/layout.json)."""
    return json.loads((data_dir / "cluster" / "layout.json").read_text())["ports"]
