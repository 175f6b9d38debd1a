"""One stack per data directory: ``ib-stack`` on the ports asked for, its endpoints file,
the commands using a running stack instead of starting a second, and the refusals.

Every command runs as a user runs it, as a subprocess (the real Weaviate, the tiny
model); Weaviate processes are counted from /proc by the data directory they serve.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from ib_vectorizer.modalities import Modality
from ib_vectorizer.server_process import free_ports, http_status
from pipelines.connection import connect_weaviate
from pipelines.provision import embedded_binary_path
from pipelines.schema import MediaField, create_bind_collection
from pipelines.stack import (
    ENDPOINTS_FILE,
    DataDirLock,
    StackError,
    lock_holder,
    wait_nodes_ready,
)

from .fixture_data import INPUTS
from .server_process import TINY_ENV
from .stack_process import IB_STACK, StackCommand, console_script, descendants, listening_sockets

IB_QUERY = console_script("pipelines.query:main")
IB_INGEST = console_script("pipelines.ingest:main")
QUICK_S = 15.0  # "within seconds" on a loaded 2-core machine; a stack takes longer to start
ENV = {**os.environ, **TINY_ENV}


def weaviate_processes(data_dir: Path) -> list[int]:
    """The Weaviate processes whose data lives under ``data_dir``."""
    binary = str(embedded_binary_path())
    wanted = f"PERSISTENCE_DATA_PATH={data_dir}".encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
            environ = Path(f"/proc/{entry}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv[0].decode(errors="replace") == binary and any(
            item.startswith(wanted) for item in environ
        ):
            found.append(int(entry))
    return found


class Watched:
    """A command run to its end while its child processes and the Weaviate processes of
    ``data_dir`` are sampled: what it started, seen from outside."""

    def __init__(self, command: list[str], data_dir: Path, env: dict[str, str] = ENV) -> None:
        self.data_dir = data_dir
        started = time.monotonic()
        self.process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
        )
        self.children: set[int] = set()
        self.most_weaviates = 0
        sampler = threading.Thread(target=self._sample, daemon=True)
        sampler.start()
        self.stdout, self.stderr = self.process.communicate(timeout=600)
        self.elapsed_s = time.monotonic() - started
        sampler.join()

    def _sample(self) -> None:
        while self.process.poll() is None:
            self.children |= set(descendants(self.process.pid))
            self.most_weaviates = max(self.most_weaviates, len(weaviate_processes(self.data_dir)))
            time.sleep(0.02)


def wait_until_gone(data_dir: Path, timeout_s: float = 60) -> list[int]:
    """The Weaviate processes of ``data_dir`` still there after at most ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while (left := weaviate_processes(data_dir)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return left


@pytest.fixture(scope="module")
def running(tmp_path_factory):
    """``ib-stack --port P --grpc-port G`` on a data directory, for the module."""
    data_dir = tmp_path_factory.mktemp("attach") / "data"
    http, grpc = free_ports(2)
    with StackCommand(data_dir, flags=("--port", str(http), "--grpc-port", str(grpc))) as stack:
        stack.asked = (http, grpc)
        yield stack


def test_ib_stack_listens_where_asked_and_publishes_its_endpoints(running):
    (node,) = running.nodes
    assert (node.http_port, node.grpc_port) == running.asked
    assert {node.http_port, node.grpc_port} <= {s.port for s in listening_sockets(node.pid)}

    record = json.loads((running.data_dir / ENDPOINTS_FILE).read_text())
    assert record["pid"] == running.process.pid == lock_holder(running.data_dir)
    assert record["weaviate_http"] == f"http://127.0.0.1:{node.http_port}"
    assert record["weaviate_grpc_port"] == node.grpc_port
    assert record["vectorizer"] == running.vectorizer_url
    assert [(n["http"], n["grpc_port"], n["pid"]) for n in record["nodes"]] == [
        (record["weaviate_http"], node.grpc_port, node.pid)
    ]
    assert record["api_key_required"] is False and record["api_key_file"] is None
    assert record["model"]["checkpoint"] == TINY_ENV["IB_CHECKPOINT"]
    assert re.search(r"the local stack on \S+ is ready in \d+\.\d s", running.log())


def test_ib_query_uses_the_running_stack_and_starts_nothing(running):
    (node,) = running.nodes
    url = f"http://127.0.0.1:{node.http_port}"
    with connect_weaviate(url, node.grpc_port) as client:
        notes = create_bind_collection(client, "Notes", [MediaField("text", Modality.TEXT)])
        notes.data.insert({"text": "a dog barks"})
    weaviate_log = running.data_dir / "logs" / "weaviate.log"
    log_size = weaviate_log.stat().st_size

    query = [*IB_QUERY, "--data-dir", str(running.data_dir), "--collection", "Notes"]
    watched = Watched([*query, "--near-text", "a barking dog", "--json"], running.data_dir)

    assert watched.process.returncode == 0, watched.stderr
    (hit,) = [json.loads(line) for line in watched.stdout.splitlines()]
    assert hit["properties"]["text"] == "a dog barks"
    assert watched.stderr.strip().endswith(
        f"INFO pipelines.stack: using the running stack on {running.data_dir}: {url} "
        f"(pid {running.process.pid})"
    ), watched.stderr
    assert watched.stderr.count("\n") == 1, watched.stderr
    assert watched.elapsed_s < QUICK_S
    assert watched.children == set()  # no inference server, no Weaviate of its own
    assert watched.most_weaviates == 1 and weaviate_processes(running.data_dir) == [node.pid]
    assert weaviate_log.stat().st_size == log_size  # no second Weaviate tried this data


def test_a_second_ib_stack_on_the_same_data_dir_is_refused_in_one_line(running):
    started = time.monotonic()
    second = subprocess.run(
        [*IB_STACK, "--data-dir", str(running.data_dir)],
        capture_output=True,
        text=True,
        timeout=120,
        env=ENV,
    )
    assert time.monotonic() - started < QUICK_S
    assert second.returncode == 1
    assert second.stderr.count("\n") == 1 and second.stdout == "", second.stderr
    pid = running.process.pid
    assert second.stderr.startswith(
        f"ib-stack: {running.data_dir} is in use by the running stack of pid {pid} ("
    ), second.stderr
    assert f"stop it (kill {pid}) to start another" in second.stderr
    # The first one never noticed.
    (node,) = running.nodes
    assert weaviate_processes(running.data_dir) == [node.pid]
    assert json.loads((running.data_dir / ENDPOINTS_FILE).read_text())["pid"] == pid
    assert http_status(f"http://127.0.0.1:{node.http_port}/v1/.well-known/ready") == 200


def test_a_data_dir_whose_stack_is_still_starting_is_refused_in_one_line(tmp_path):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    lock = DataDirLock(data_dir, str(data_dir))
    lock.acquire()  # as a stack does before it starts its parts
    try:
        query = [*IB_QUERY, "--data-dir", str(data_dir), "--collection", "C", "--near-text", "x"]
        watched = Watched(query, data_dir)
    finally:
        lock.release()
    assert watched.process.returncode == 1
    assert watched.elapsed_s < QUICK_S
    assert watched.stderr.count("\n") == 1, watched.stderr
    assert watched.stderr.startswith(f"ib-query: {data_dir} is held by pid {os.getpid()} (")
    assert "still starting" in watched.stderr and f"kill {os.getpid()}" in watched.stderr
    assert watched.children == set() and watched.most_weaviates == 0
    assert not (data_dir / "logs").exists()  # refused before anything started


def test_a_port_taken_is_refused_in_one_line(tmp_path):
    data_dir = tmp_path / "data"
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        refused = subprocess.run(
            [*IB_STACK, "--data-dir", str(data_dir), "--port", str(port)],
            capture_output=True,
            text=True,
            timeout=120,
            env=ENV,
        )
    assert refused.returncode == 1
    assert refused.stderr.count("\n") == 1, refused.stderr
    assert refused.stderr.startswith(f"ib-stack: --port {port}: taken by another program")
    assert not (data_dir / "logs" / "weaviate.log").exists()
    assert lock_holder(data_dir) is None


def test_ib_stack_without_ports_falls_back_to_free_ones_and_its_file_goes_with_it(tmp_path):
    """8080 taken (by this test, or whatever holds it): free ports, said in one line; the
    endpoints file is there while the stack runs, and gone when it stops."""
    data_dir = tmp_path / "data"
    with socket.socket() as squatter:
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # past TIME_WAIT, as servers
        try:
            squatter.bind(("127.0.0.1", 8080))
            squatter.listen()
        except OSError:
            pass  # something else holds it: taken all the same
        with StackCommand(data_dir) as stack:
            (node,) = stack.nodes
            assert node.http_port != 8080
            assert re.search(
                r"INFO pipelines\.stack: ports? 8080 (and 50051 )?(is|are) taken, so Weaviate "
                r"listens on free ports \(choose them with --port and --grpc-port\)\n",
                stack.log(),
            ), stack.log()
            record = json.loads((data_dir / ENDPOINTS_FILE).read_text())
            assert record["weaviate_http"] == f"http://127.0.0.1:{node.http_port}"
            assert stack.terminate() == 0
    assert not (data_dir / ENDPOINTS_FILE).exists()
    assert lock_holder(data_dir) is None


def test_ib_ingest_starts_a_stack_says_so_and_counts_its_start(tmp_path):
    dataset = tmp_path / "dataset"
    (dataset / "image").mkdir(parents=True)
    for name in ("a.jpg", "b.jpg"):
        shutil.copy(INPUTS / "image_rgb.jpg", dataset / "image" / name)
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    gone = subprocess.Popen(["true"])
    gone.wait()
    stale = {"pid": gone.pid, "weaviate_http": "http://127.0.0.1:9", "weaviate_grpc_port": 9}
    stale |= {"vectorizer": "http://127.0.0.1:9", "nodes": []}
    (data_dir / ENDPOINTS_FILE).write_text(json.dumps(stale))  # left by a stack killed outright

    ingest = [*IB_INGEST, "--input", str(dataset), "--collection", "Pics"]
    ingest += ["--data-dir", str(data_dir), "--dead-letter", str(tmp_path / "failed.jsonl")]
    watched = Watched(ingest, data_dir)

    assert watched.process.returncode == 0, watched.stderr
    assert "using the running stack" not in watched.stderr
    assert watched.most_weaviates == 1  # its own, while it ran
    started = re.search(
        rf"INFO pipelines\.stack: starting the local stack on {re.escape(str(data_dir))} "
        r"\(Weaviate 1\.38\.11, the inference server\)…\n",
        watched.stderr,
    )
    ready = re.search(r"the local stack on \S+ is ready in (\d+\.\d) s", watched.stderr)
    assert started and ready, watched.stderr
    summary = re.search(
        r"ib_ingest: done in \d+\.\d s \(stack start (\d+\.\d) s\): read 2,", watched.stderr
    )
    assert summary, watched.stderr
    assert summary.group(1) == ready.group(1) and float(ready.group(1)) > 1.0
    assert not (data_dir / ENDPOINTS_FILE).exists()  # the stale file went; its own stays private
    assert lock_holder(data_dir) is None
    assert wait_until_gone(data_dir) == []


class StartingNode:
    """A Weaviate node as the start-up wait sees it: ready after a while, or dead."""

    def __init__(self, name: str, log_path: Path, ready_after: int, exits: bool = False) -> None:
        self.name, self.log_path = name, log_path
        self.ready_after, self.exits, self.polls = ready_after, exits, 0
        died = "panic: cannot open its data\n" if exits else ""
        log_path.write_text(f"{name} starting\n{died}")

    def exit_code(self) -> int | None:
        self.polls += 1
        return 1 if self.exits and self.polls > 2 else None

    def answers_ready(self) -> bool:
        return not self.exits and self.polls >= self.ready_after


def test_a_node_that_dies_while_the_cluster_starts_fails_the_start_and_names_it(tmp_path):
    nodes = [
        StartingNode("node1", tmp_path / "node1.log", ready_after=10**9),  # waits for Raft
        StartingNode("node2", tmp_path / "node2.log", ready_after=10**9, exits=True),
        StartingNode("node3", tmp_path / "node3.log", ready_after=10**9),
    ]
    with pytest.raises(StackError) as raised:
        wait_nodes_ready(nodes, timeout_s=600)
    message = str(raised.value)
    assert message.startswith("weaviate node2 exited with status 1 during start-up")
    assert "panic: cannot open its data" in message
    assert nodes[0].polls <= 4  # noticed on the third look, not after the deadline


def test_nodes_not_ready_by_the_deadline_are_named():
    ready = StartingNode("node1", Path(os.devnull), ready_after=1)
    slow = StartingNode("node2", Path(os.devnull), ready_after=10**9)
    with pytest.raises(StackError, match=r"^weaviate node2 not ready after 0.3 s"):
        wait_nodes_ready([ready, slow], timeout_s=0.3)
    wait_nodes_ready([StartingNode("node1", Path(os.devnull), ready_after=3)], timeout_s=60)
