"""Where the local stack listens: 127.0.0.1 only unless asked, and beyond it only behind a key.

Every listening socket (TCP and UDP, IPv4 and IPv6) of every process of a
running ``ib-stack`` (the command itself, each Weaviate node, the inference
server) is read from /proc; anonymous requests are made on the ports that
answer clients.
"""

from __future__ import annotations

import base64
import ipaddress
import logging
import os
import stat
import subprocess
import urllib.request
from pathlib import Path

import grpc
import pytest

from ib_vectorizer.options import ModelOptions
from ib_vectorizer.server_process import http_status
from pipelines.stack import LocalStack

from .server_process import TINY_ENV
from .stack_process import IB_STACK, StackCommand, cluster_layout, listening_sockets

KEY = "a-key-for-the-tests"
LET_THROUGH = "could not find class Nothing"  # the search was run: no such collection


def listeners_by_pid(stack: StackCommand) -> dict[int, list]:
    return {pid: listening_sockets(pid) for pid in stack.pids()}


def weaviate_ports(node: dict[str, int]) -> set[int]:
    """What one node of a cluster layout listens on: HTTP, gRPC, gossip, data, Raft, Raft RPC."""
    return {node["http"], node["grpc"], *range(node["gossip"], node["gossip"] + 4)}


def anonymous_search(grpc_port: int) -> str:
    """What Weaviate's gRPC API says to a search without a key for a collection that does not
    exist: that it does not (the search ran), or why it refused."""
    from weaviate.proto.v1 import search_get_pb2, weaviate_pb2_grpc

    with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
        request = search_get_pb2.SearchRequest(collection="Nothing", limit=1, uses_127_api=True)
        try:
            weaviate_pb2_grpc.WeaviateStub(channel).Search(request, timeout=10)
        except grpc.RpcError as err:
            return err.details()
    return "answered"


def refused(answer: str) -> bool:
    return "auth" in answer and LET_THROUGH not in answer


def test_a_single_node_stack_listens_on_loopback_only(tmp_path):
    with StackCommand(tmp_path / "stack") as stack:
        node = stack.nodes[0]
        listeners = listeners_by_pid(stack)
        every = [socket for found in listeners.values() for socket in found]
        assert every and all(socket.address == "127.0.0.1" for socket in every), every

        # The node: HTTP, gRPC and four cluster ports (gossip over TCP and UDP); no profiler.
        tcp = {s.port for s in listeners[node.pid] if s.protocol == "tcp"}
        assert {node.http_port, node.grpc_port} <= tcp and len(tcp) == 6, sorted(tcp)
        gossip = min(tcp - {node.http_port, node.grpc_port})
        assert tcp == {node.http_port, node.grpc_port, *range(gossip, gossip + 4)}
        assert {s.port for s in listeners[node.pid] if s.protocol == "udp"} == {gossip}
        # The inference server: its one port. ib-stack itself: none.
        vectorizer_port = int(stack.vectorizer_url.rsplit(":", 1)[1])
        others = {pid: found for pid, found in listeners.items() if pid != node.pid}
        assert sorted(s.port for found in others.values() for s in found) == [vectorizer_port]
        assert listeners[stack.process.pid] == []

        # Only this machine can reach it, so it asks for no key.
        assert http_status(f"http://127.0.0.1:{node.http_port}/v1/schema") == 200
        assert LET_THROUGH in anonymous_search(node.grpc_port)


def test_a_three_node_cluster_listens_on_loopback_only(tmp_path):
    with StackCommand(tmp_path / "cluster", nodes=3) as stack:
        listeners = listeners_by_pid(stack)
        every = [socket for found in listeners.values() for socket in found]
        assert all(socket.address == "127.0.0.1" for socket in every), every
        for node, ports in zip(stack.nodes, cluster_layout(stack.data_dir), strict=True):
            found = listeners[node.pid]
            assert {s.port for s in found if s.protocol == "tcp"} == weaviate_ports(ports)
            assert {s.port for s in found if s.protocol == "udp"} == {ports["gossip"]}
        assert sum(len(found) for found in listeners.values()) == 3 * 7 + 1  # + the vectorizer


def test_binding_beyond_loopback_without_a_key_is_refused(tmp_path):
    env = {key: value for key, value in os.environ.items() if key != "WEAVIATE_API_KEY"}
    for host, says in (("0.0.0.0", "--api-key"), ("example.org", "not an IPv4 address")):
        command = [*IB_STACK, "--data-dir", str(tmp_path), "--host", host]
        refused = subprocess.run(command, capture_output=True, text=True, env={**env, **TINY_ENV})
        assert refused.returncode == 1
        assert refused.stderr.count("\n") == 1 and says in refused.stderr, refused.stderr
        assert refused.stderr.startswith("ib-stack: ")
    assert not (tmp_path / "logs").exists()  # refused before anything started


def test_a_stack_bound_to_every_interface_asks_for_its_key(tmp_path):
    from ib_vectorizer.modalities import Modality
    from pipelines.connection import connect_weaviate
    from pipelines.schema import MediaField, create_bind_collection

    flags = ("--host", "0.0.0.0")
    with StackCommand(tmp_path / "stack", flags=flags, env={"WEAVIATE_API_KEY": KEY}) as stack:
        node = stack.nodes[0]
        listeners = listeners_by_pid(stack)
        every = [socket for found in listeners.values() for socket in found]
        wide = [socket for socket in every if socket.address != "127.0.0.1"]
        assert {socket.port for socket in wide} == {node.http_port, node.grpc_port}, every
        # Go listens on "::" (IPv4 and IPv6) when asked for 0.0.0.0
        assert all(ipaddress.ip_address(socket.address).is_unspecified for socket in wide)

        assert http_status(f"http://127.0.0.1:{node.http_port}/v1/schema") == 401
        bearer = {"Authorization": f"Bearer {KEY}"}
        assert http_status(f"http://127.0.0.1:{node.http_port}/v1/schema", bearer) == 200
        assert refused(anonymous_search(node.grpc_port))

        client = connect_weaviate(f"http://127.0.0.1:{node.http_port}", node.grpc_port, KEY)
        with client:
            notes = create_bind_collection(client, "Notes", [MediaField("text", Modality.TEXT)])
            notes.data.insert({"text": "a dog barks"})  # vectorized by our server
            found = notes.query.near_text("a barking dog", limit=1).objects
            assert [o.properties["text"] for o in found] == ["a dog barks"]


def not_our_build(tmp_path) -> Path:
    """The provisioned Weaviate under another name: no record of our build is next to it."""
    from pipelines.provision import embedded_binary_path

    binary = tmp_path / "bin" / "weaviate"
    binary.parent.mkdir()
    binary.symlink_to(embedded_binary_path())
    return binary


def test_a_binary_that_is_not_our_build_runs_behind_a_key_of_its_own(tmp_path, caplog):
    """Any other build (a release, a plain ``go install``) would open gRPC and the cluster API
    on every interface: the stack then requires a key, kept in its data directory."""
    from weaviate.classes.config import Configure, DataType, Property

    from pipelines.connection import with_consistency

    not_ours = not_our_build(tmp_path)
    model = ModelOptions(model=TINY_ENV["IB_MODEL"], checkpoint=TINY_ENV["IB_CHECKPOINT"])
    data_dir = tmp_path / "stack"
    caplog.set_level(logging.WARNING, logger="pipelines.stack")
    with LocalStack(data_dir, model, weaviate_binary=not_ours, nodes=3) as stack:
        key_file = stack.api_key_path
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
        assert stack.api_key == key_file.read_text().strip() and len(stack.api_key) >= 32
        warnings = [r.getMessage() for r in caplog.records if "not our build" in r.getMessage()]
        assert len(warnings) == 1 and str(key_file) in warnings[0]

        for number, ports in enumerate(cluster_layout(data_dir), start=1):
            assert http_status(f"http://127.0.0.1:{ports['http']}/v1/schema") == 401
            assert refused(anonymous_search(ports["grpc"]))
            data_api = f"http://127.0.0.1:{ports['gossip'] + 1}/nodes/status"
            assert http_status(data_api) == 401, f"node {number}'s cluster API"
            basic = base64.b64encode(f"ib-stack:{stack.api_key}".encode()).decode()
            assert http_status(data_api, {"Authorization": f"Basic {basic}"}) == 200

        # With the key, the cluster works as ever: a write at ALL through node 1, read via node 2.
        with stack.client(1) as client:
            notes = client.collections.create(
                "Kept",
                properties=[Property(name="text", data_type=DataType.TEXT)],
                vector_config=Configure.Vectors.self_provided(),
                replication_config=Configure.replication(factor=3),
            )
            with_consistency(notes, "ALL").data.insert({"text": "kept"}, vector=[0.6, 0.8])
        with stack.client(2) as client:
            kept = with_consistency(client.collections.get("Kept"), "ALL")
            assert [o.properties["text"] for o in kept.query.fetch_objects().objects] == ["kept"]

    # The same data directory keeps its key.
    with LocalStack(data_dir, model, weaviate_binary=not_ours, nodes=3) as again:
        assert again.api_key == key_file.read_text().strip()
        request = urllib.request.Request(
            again.endpoints.weaviate_http + "/v1/schema",
            headers={"Authorization": f"Bearer {again.api_key}"},
        )
        with urllib.request.urlopen(request, timeout=30) as answer:
            assert answer.status == 200


def test_the_stack_checks_host_and_key_before_starting(tmp_path):
    from pipelines.stack import StackError

    assert LocalStack(tmp_path, host="127.0.0.2").api_key is None  # all of 127/8 is loopback
    with pytest.raises(StackError, match="give it an API key"):
        LocalStack(tmp_path, host="0.0.0.0")
    with pytest.raises(StackError, match="without commas"):
        LocalStack(tmp_path, host="0.0.0.0", api_key="one,two")


def test_an_empty_key_file_is_refused_rather_than_run_without_a_key(tmp_path):
    from pipelines.stack import StackError

    data_dir = tmp_path / "stack"
    data_dir.mkdir()
    (data_dir / "api-key").write_text("\n")
    with pytest.raises(StackError, match="api-key is empty: remove it"):
        LocalStack(data_dir, weaviate_binary=not_our_build(tmp_path)).start()
    assert not (data_dir / "logs" / "weaviate.log").exists()  # nothing was started
