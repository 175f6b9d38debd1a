"""A part of the stack that dies is started again: a node, the only node, the vectorizer.

The real ``ib-stack`` runs as a subprocess; its processes are killed from
outside with SIGKILL, as a crash or the kernel's OOM killer would, never
through the stack's own API. Writes and queries go through weaviate-client.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import threading
import time
from collections.abc import Callable

from ib_vectorizer.modalities import Modality
from ib_vectorizer.retry import call_with_retries
from pipelines.connection import connect_weaviate, with_consistency
from pipelines.query import QUERY_BACKOFF, transient
from pipelines.schema import MediaField, create_bind_collection
from pipelines.stack import RESTART_DELAYS_S

from .stack_process import NodeLine, StackCommand, alive, listening_sockets

FIELDS = [MediaField("text", Modality.TEXT)]
BEFORE = 20  # notes written before the clients start
BACK = r"is back: (http://\S+ grpc \S+ pid \d+)"


def killed(label: str, pid: int) -> str:
    """How ib-stack's log says that ``label`` (process ``pid``) died of a SIGKILL."""
    return rf"{label} died \(pid {pid} exited, killed by SIGKILL\); restarting it in"


def connect(node: NodeLine):
    return connect_weaviate(f"http://{node.address}:{node.http_port}", node.grpc_port)


def note_id(number: int) -> str:
    from weaviate.util import generate_uuid5

    return str(generate_uuid5(f"note {number}"))


def write_note(collection, number: int) -> None:
    """One object, vectorized by our server through Weaviate; a batch write, so a retry of a
    write that landed replaces it. Asked again as our clients ask, then it must have landed."""
    from weaviate.classes.data import DataObject

    def attempt() -> None:
        result = collection.data.insert_many(
            [DataObject({"text": f"note {number}"}, uuid=note_id(number))]
        )
        if result.has_errors:
            raise RuntimeError(next(iter(result.errors.values())).message)

    call_with_retries(attempt, retryable=lambda _: True, backoff=QUERY_BACKOFF, what="a write")


def query_notes(collection) -> int:
    """How many notes a near-text query (vectorized by our server) finds, asked as ib-query asks."""

    def find() -> list:
        return collection.query.near_text("note", limit=3).objects

    return len(call_with_retries(find, retryable=transient, backoff=QUERY_BACKOFF, what="a query"))


def ids_at_all(node: NodeLine, expected: set[str], timeout_s: float = 180) -> set[str]:
    """The ids ``node`` reads at consistency ALL, asked until they are ``expected`` (a replica
    that was down catches up by Weaviate's async replication) or ``timeout_s`` passes."""
    deadline = time.monotonic() + timeout_s
    while True:
        with connect(node) as client:
            notes = with_consistency(client.collections.get("Notes"), "ALL")
            found = {str(o.uuid) for o in notes.query.fetch_objects(limit=10_000).objects}
        if found == expected or time.monotonic() > deadline:
            return found
        time.sleep(1)


def assert_back_where_it_was(back: re.Match, node: NodeLine) -> None:
    """The restarted node's line names its old ports, and a new process listens on them
    (on loopback only)."""
    again = NodeLine.parse(f"weaviate node {node.number}: {back.group(1)}")
    assert (again.address, again.http_port, again.grpc_port) == (
        node.address,
        node.http_port,
        node.grpc_port,
    )
    assert again.pid != node.pid and alive(again.pid)
    listening = listening_sockets(again.pid)
    assert {node.http_port, node.grpc_port} <= {s.port for s in listening}
    assert {s.address for s in listening} == {"127.0.0.1"}


class Client(threading.Thread):
    """A client that keeps calling ``action(n)`` for n = 0, 1, 2, ... until halted, keeping
    what each call returned: writes or queries going on while a node dies and comes back."""

    def __init__(self, action: Callable[[int], object]) -> None:
        super().__init__(daemon=True)
        self.action = action
        self.results: list = []
        self.error: BaseException | None = None
        self.halt = threading.Event()

    def run(self) -> None:
        try:
            while not self.halt.is_set():
                self.results.append(self.action(len(self.results)))
        except BaseException as err:  # handed to the test
            self.error = err

    def wait_for(self, calls: int, timeout_s: float = 300) -> None:
        deadline = time.monotonic() + timeout_s
        while len(self.results) < calls:
            assert self.error is None and self.is_alive(), f"the client stopped: {self.error!r}"
            assert time.monotonic() < deadline, f"only {len(self.results)} calls answered"
            time.sleep(0.05)


def test_a_cluster_node_killed_from_outside_comes_back_and_no_write_is_lost(tmp_path):
    with StackCommand(tmp_path / "cluster", nodes=3) as stack:
        first, victim, third = stack.nodes
        with connect(first) as writer, connect(third) as reader:
            create_bind_collection(writer, "Notes", FIELDS, replication_factor=3)
            writes = with_consistency(writer.collections.get("Notes"), "QUORUM")
            reads = with_consistency(reader.collections.get("Notes"), "ONE")
            for number in range(BEFORE):
                write_note(writes, number)
            clients = [
                Client(lambda n: write_note(writes, BEFORE + n)),  # through node 1
                Client(lambda _: query_notes(reads)),  # through node 3
            ]
            for client in clients:
                client.start()
            try:
                for client in clients:
                    client.wait_for(10)
                os.kill(victim.pid, signal.SIGKILL)
                stack.wait_for_log(killed("weaviate-node2", victim.pid))
                back = stack.wait_for_log("weaviate-node2 " + BACK)
                for client in clients:  # and they go on once it is back
                    client.wait_for(len(client.results) + 10)
            finally:
                for client in clients:
                    client.halt.set()
                    client.join()
        writes_done, queries = clients
        assert writes_done.error is None and queries.error is None
        assert all(found > 0 for found in queries.results)  # every query answered

        assert_back_where_it_was(back, victim)
        # Every write landed, node 2 included (read at ALL through it).
        expected = {note_id(number) for number in range(BEFORE + len(writes_done.results))}
        assert ids_at_all(victim, expected) == expected
        assert stack.process.poll() is None  # the stack never stopped
        assert {node.pid for node in stack.nodes} & set(stack.pids()) == {first.pid, third.pid}
        assert stack.terminate() == 0
    # StackCommand checked that no process of the stack is left.


def test_a_single_node_and_the_vectorizer_killed_from_outside_come_back(tmp_path):
    with StackCommand(tmp_path / "stack") as stack:
        node = stack.nodes[0]
        with connect(node) as client:
            notes = create_bind_collection(client, "Notes", FIELDS)
            for number in range(10):
                write_note(notes, number)

        os.kill(node.pid, signal.SIGKILL)
        stack.wait_for_log(killed("weaviate", node.pid))
        assert_back_where_it_was(stack.wait_for_log("weaviate " + BACK), node)
        with connect(node) as client:  # on its data: what was written is there
            notes = client.collections.get("Notes")
            assert len(notes.query.fetch_objects(limit=100).objects) == 10

        vectorizer_port = int(stack.vectorizer_url.rsplit(":", 1)[1])
        (vectorizer,) = [
            pid
            for pid in stack.pids()
            if vectorizer_port in {s.port for s in listening_sockets(pid)}
        ]
        os.kill(vectorizer, signal.SIGKILL)
        died = stack.wait_for_log(killed("vectorizer", vectorizer))
        stack.wait_for_log(rf"vectorizer is back: {stack.vectorizer_url} pid \d+", died.end())
        with connect(node) as client:  # Weaviate reaches it where it was: writes vectorize again
            notes = client.collections.get("Notes")
            write_note(notes, 10)
            assert query_notes(notes) == 3
            assert len(notes.query.fetch_objects(limit=100).objects) == 11
        assert stack.process.poll() is None
        assert stack.terminate() == 0


def test_a_node_that_keeps_dying_is_given_up_and_the_stack_says_why(tmp_path):
    with StackCommand(tmp_path / "stack") as stack, socket.socket() as squatter:
        node = stack.nodes[0]
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        os.kill(node.pid, signal.SIGKILL)
        while True:  # take its gRPC port the moment it is free: every restart then fails
            try:
                squatter.bind(("127.0.0.1", node.grpc_port))
                break
            except OSError:
                time.sleep(0.01)
        squatter.listen()
        assert stack.process.wait(timeout=600) == 1
        log = stack.log()
        deaths = re.findall(r"weaviate died \(pid \d+ exited, [^)]*\)", log)
        assert len(deaths) == len(RESTART_DELAYS_S) + 1, log
        assert log.count("weaviate restarted (pid") == len(RESTART_DELAYS_S), log
        assert "not starting it again" in log
        assert "every Weaviate node kept dying; stopping the stack" in log
