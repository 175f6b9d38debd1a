"""A three-node Weaviate cluster on this host: replication, and a node killed mid-ingest.

Real processes throughout: three Weaviate servers forming one cluster (Raft
and gossip on 127.0.0.1), our inference server as every node's
multi2vec-bind vectorizer, and ``ib-ingest`` as a user runs it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from ib_vectorizer.bench.payloads import image_payload
from ib_vectorizer.modalities import Modality
from pipelines.connection import with_consistency

from .server_process import TINY_ENV
from .test_ingest import cosine, read_failures, server_vector

BIN = Path(sys.executable).parent
TOTAL = 480  # photos; written four at a time, so the kill lands mid-job


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    from ib_vectorizer.options import ModelOptions
    from pipelines.stack import LocalStack

    model = ModelOptions(model=TINY_ENV["IB_MODEL"], checkpoint=TINY_ENV["IB_CHECKPOINT"])
    with LocalStack(tmp_path_factory.mktemp("cluster"), model, nodes=3) as running:
        yield running


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    tree = tmp_path_factory.mktemp("photos")
    (tree / "image").mkdir()
    rng = np.random.default_rng(11)
    for i in range(TOTAL):
        (tree / "image" / f"{i:04d}.jpg").write_bytes(image_payload(rng, size=(160, 120)))
    return tree


def node_flags(cluster) -> list[str]:
    nodes = cluster.endpoints.nodes
    urls = ",".join(node.http for node in nodes)
    ports = ",".join(str(node.grpc_port) for node in nodes)
    return ["--weaviate-url", urls, "--grpc-port", ports]


def sources_at_one(cluster, node: int, name: str) -> list[str]:
    """The source ids of a collection's objects, read through ``node`` at consistency ONE."""
    with cluster.client(node) as client:
        if not client.collections.exists(name):
            return []
        collection = with_consistency(client.collections.get(name), "ONE")
        found = collection.query.fetch_objects(limit=TOTAL + 100, return_properties=["source_id"])
        return [o.properties["source_id"] for o in found.objects]


def query_node(cluster, node: int, photo: Path, *flags: str) -> subprocess.CompletedProcess:
    """``ib-query`` through one node, by a photo, as JSON lines."""
    endpoint = cluster.endpoints.nodes[node - 1]
    command = [str(BIN / "ib-query"), "--collection", "Replicated", "--near-image", str(photo)]
    command += ["--weaviate-url", endpoint.http, "--grpc-port", str(endpoint.grpc_port)]
    command += ["--limit", "3", "--json", *flags]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


def test_three_nodes_form_one_cluster(cluster):
    with urllib.request.urlopen(cluster.endpoints.weaviate_http + "/v1/nodes", timeout=10) as r:
        nodes = json.loads(r.read())["nodes"]
    assert sorted(n["name"] for n in nodes) == ["node1", "node2", "node3"]
    assert {n["status"] for n in nodes} == {"HEALTHY"}
    lines = cluster.endpoints.lines()
    assert lines[0] == f"weaviate http: {cluster.endpoints.nodes[0].http}"
    for number, (line, node) in enumerate(zip(lines[3:], cluster.endpoints.nodes, strict=True), 1):
        assert line == (
            f"weaviate node {number}: {node.http} grpc 127.0.0.1:{node.grpc_port} pid {node.pid}"
        )
    assert len({node.pid for node in cluster.endpoints.nodes}) == 3


def test_ingest_survives_a_node_killed_halfway_and_the_node_catches_up(cluster, photos, tmp_path):
    from weaviate.exceptions import WeaviateQueryError
    from weaviate.util import generate_uuid5

    dead_letters = tmp_path / "failures.jsonl"
    log_path = tmp_path / "ingest.log"
    command = [
        str(BIN / "ib-ingest"), "--input", str(photos), "--collection", "Replicated",
        *node_flags(cluster), "--replication-factor", "3", "--consistency-level", "QUORUM",
        "--batch-size", "4", "--dead-letter", str(dead_letters),
        "--model", TINY_ENV["IB_MODEL"], "--checkpoint", TINY_ENV["IB_CHECKPOINT"],
    ]  # fmt: skip
    with log_path.open("w") as log:
        job = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    try:
        # Node 1 is the one the job writes through first: kill it once a fifth is in.
        written = []
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and job.poll() is None:
            try:
                written = sources_at_one(cluster, 2, "Replicated")
            except WeaviateQueryError:  # the collection's shard is still being made
                written = []
            if len(written) >= TOTAL // 5:
                break
            time.sleep(0.2)
        cluster.kill_node(1)
        assert 0 < len(written) < TOTAL, f"not caught mid-job ({len(written)} of {TOTAL})"

        # During the outage, reads at consistency ONE keep answering through the others.
        for node in (2, 3):
            answer = query_node(cluster, node, photos / written[0], "--consistency-level", "ONE")
            assert answer.returncode == 0, answer.stderr
            top = json.loads(answer.stdout.splitlines()[0])
            assert top["properties"]["source_id"] == written[0]
        assert job.wait(timeout=600) == 0, log_path.read_text()[-3000:]
    finally:
        if job.poll() is None:
            job.kill()
    log_text = log_path.read_text()
    assert "trying the next" in log_text or "using weaviate" in log_text, log_text[-3000:]
    assert read_failures(dead_letters) == []  # every object a retry could write was written
    assert len(sources_at_one(cluster, 2, "Replicated")) == TOTAL

    # Node 1 comes back on its data, catches up, and a read at ALL has every object.
    cluster.restart_node(1)
    expected = {
        str(generate_uuid5(f"image/{i:04d}.jpg")): server_vector(
            cluster, Modality.VISION, (photos / "image" / f"{i:04d}.jpg").read_bytes()
        )
        for i in range(TOTAL)
    }
    deadline = time.monotonic() + 180
    while True:
        with cluster.client(1) as client:
            at_all = with_consistency(client.collections.get("Replicated"), "ALL")
            found = {
                str(o.uuid): np.array(o.vector["imagebind"])
                for o in at_all.query.fetch_objects(limit=TOTAL + 100, include_vector=True).objects
            }
        if found.keys() == expected.keys() or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert found.keys() == expected.keys(), f"{len(found)} of {TOTAL} objects at ALL"
    for uuid, vector in expected.items():
        assert cosine(found[uuid], vector) >= 0.9999, uuid

    # A near-media query through each node (each vectorizes it with our server) agrees.
    photo = photos / "image" / "0042.jpg"
    tops = []
    for node in (1, 2, 3):
        answer = query_node(cluster, node, photo, "--consistency-level", "ALL")
        assert answer.returncode == 0, answer.stderr
        tops.append(json.loads(answer.stdout.splitlines()[0]))
    assert {top["properties"]["source_id"] for top in tops} == {"image/0042.jpg"}
    assert {top["id"] for top in tops} == {tops[0]["id"]}


def test_ib_stack_nodes_prints_a_line_per_node_and_comes_back_on_its_data(tmp_path):
    data_dir = tmp_path / "stack"

    def start() -> tuple[subprocess.Popen, list[str]]:
        process = subprocess.Popen(
            [str(BIN / "ib-stack"), "--data-dir", str(data_dir), "--nodes", "3"],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env={**os.environ, **TINY_ENV},
        )
        return process, [process.stdout.readline().rstrip("\n") for _ in range(6)]

    def stop(process: subprocess.Popen) -> None:
        process.terminate()
        assert process.wait(timeout=120) == 0

    first, lines = start()
    try:
        assert lines[0].startswith("weaviate http: http://127.0.0.1:"), lines
        assert lines[2].startswith("vectorizer: http://127.0.0.1:"), lines
        node_lines = lines[3:]
        for number, line in enumerate(node_lines, start=1):
            assert line.startswith(f"weaviate node {number}: http://127.0.0.1:"), lines
        url = node_lines[1].split(": ", 1)[1].split()[0]
        body = json.dumps({"class": "Kept"}).encode()
        request = urllib.request.Request(
            url + "/v1/schema", data=body, headers={"Content-Type": "application/json"}
        )
        urllib.request.urlopen(request, timeout=30).close()  # created through node 2
    finally:
        stop(first)

    second, again = start()
    try:
        assert again[3:] != node_lines  # new pids...
        strip_pid = [line.rsplit(" pid ", 1)[0] for line in again[3:]]
        assert strip_pid == [line.rsplit(" pid ", 1)[0] for line in node_lines]  # ...same ports
        with urllib.request.urlopen(again[0].split(": ", 1)[1] + "/v1/schema", timeout=30) as r:
            assert [c["class"] for c in json.loads(r.read())["classes"]] == ["Kept"]
    finally:
        stop(second)


def test_a_collection_keeps_its_replication_factor(cluster):
    from pipelines.schema import MediaField, create_bind_collection

    with cluster.client(2) as client:
        fields = [MediaField("photo", Modality.VISION)]
        created = create_bind_collection(client, "Thrice", fields, replication_factor=3)
        assert created.config.get().replication_config.factor == 3
        with pytest.raises(ValueError, match="exists with replication factor 3, not 2"):
            create_bind_collection(client, "Thrice", fields, replication_factor=2)
