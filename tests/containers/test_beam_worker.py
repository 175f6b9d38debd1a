"""ib-ingest on a real Flink cluster whose Beam SDK workers run in the worker image.

Two ways a cluster gets its workers from the image, one Flink cluster for both:

* Beam's DOCKER environment: the TaskManager starts each SDK worker with
  ``docker run --network=host IMAGE --id=... --provision_endpoint=localhost:PORT``; the
  image's entrypoint (Beam's boot binary) fetches the job's options and runs Beam's
  Python worker, which runs ib-ingest's DoFns.
* The EXTERNAL environment: the image started with ``--worker_pool`` (as a sidecar of a
  TaskManager pod is), a pool on port 50000 that starts a worker when the runner asks.

With the host's network a worker reaches the TaskManager, Weaviate and the inference
server on the loopback. Neither way mounts anything, so what the job opens by path (the
fixture model, the input tree) goes into a thin image on top of the worker image, at the
same absolute paths as here; a real cluster reads both from storage every worker sees
(gs://, s3://, a shared volume), or bakes the model into its own image.
"""

from __future__ import annotations

import json
import shutil
import socket
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from ib_vectorizer.server_process import free_ports, tail
from pipelines.ingest.command import main as ingest
from pipelines.runners.cluster import Cluster, start_cluster

from ..server_process import TINY_ENV
from ..test_ingest import (
    DIRECTORY_FILES,
    assert_vectors_like_the_server,
    copy_dataset,
    count,
)
from .docker import Container, unique_name, wait_for
from .provision import LOCAL_LABEL, STATE, classic_build, docker, inspect

EXPECTED_IDS = [*DIRECTORY_FILES, "text/note.txt"]
# The first job on a fresh cluster: a worker container starts, imports torch and Beam,
# loads the model; minutes at most on two cores, so a hang fails instead of waiting.
JOB_TIMEOUT_S = 900
# The port Beam's boot binary serves its worker pool on (fixed: `--worker_pool` takes none).
WORKER_POOL_PORT = 50000


def containers_of(image: str, running_only: bool = False) -> list[str]:
    which = () if running_only else ("-a",)
    listed = docker("ps", *which, "-q", "--no-trunc", "--filter", f"ancestor={image}", check=False)
    return listed.stdout.split()


@pytest.fixture(scope="module")
def flink(tmp_path_factory) -> Iterator[Cluster]:
    """A Flink session cluster (one TaskManager, one slot) and Beam's job server for it."""
    (job_port,) = free_ports(1)
    directory = tmp_path_factory.mktemp("flink")
    cluster, _ = start_cluster("flink", directory, workers=1, slots=1, job_port=job_port)
    processes = list(cluster.processes)
    try:
        yield cluster
    finally:
        cluster.stop()
    assert not [p.role for p in processes if p.alive()], "cluster processes left running"


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return copy_dataset(tmp_path_factory.mktemp("worker-dataset"))


@pytest.fixture(scope="module")
def job_image(worker_image, dataset, tmp_path_factory):
    """The worker image plus the fixture model and the input tree, at this machine's paths."""
    model, checkpoint = Path(TINY_ENV["IB_MODEL"]), Path(TINY_ENV["IB_CHECKPOINT"])
    assert model.parent == checkpoint.parent
    context = tmp_path_factory.mktemp("job-image")
    (context / "model").mkdir()
    for path in (model, checkpoint):
        shutil.copy(path, context / "model" / path.name)
    shutil.copytree(dataset, context / "dataset")
    (context / "Dockerfile").write_text(
        f"FROM {worker_image}\n"
        f"COPY model/ {model.parent}/\n"
        f"COPY dataset/ {dataset}/\n"
        f"LABEL {LOCAL_LABEL}=test\n"
    )
    tag = f"ib-vectorizer-test/beam-worker:{uuid.uuid4().hex[:8]}"
    classic_build(["-t", tag, str(context)], log=STATE / "build-beam-worker-test.log")
    try:
        yield tag
    finally:
        for container in containers_of(tag):
            docker("rm", "-f", "-v", container, check=False)
        docker("rmi", "-f", tag, check=False)


class WorkerContainers:
    """Records the containers of ``image`` while a job runs (Flink removes them after)."""

    def __init__(self, image: str) -> None:
        self.image = image
        self.users: dict[str, str] = {}  # container id → the user it ran as
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def __enter__(self) -> WorkerContainers:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _watch(self) -> None:
        while not self._stop.wait(0.5):
            for container in containers_of(self.image):
                if container not in self.users:
                    info = inspect("container", container)
                    if info:
                        self.users[container] = info["Config"]["User"]


def cluster_logs(cluster: Cluster) -> str:
    """The ends of the TaskManager's and the job server's logs, for a failure message."""
    logs = sorted((cluster.directory / "logs").rglob("*.log"))
    wanted = [p for p in logs if "taskmanager" in str(p) or "taskexecutor" in p.name]
    wanted += [p for p in logs if p.name == "job-server.log"]
    return "\n".join(f"--- {p}\n{tail(p, 30)}" for p in wanted)


def run_ingest_within(argv: list[str], timeout_s: float, cluster: Cluster) -> int:
    """``ib-ingest argv`` in this process; fails (cluster logs attached) if it hangs."""
    outcome: dict[str, object] = {}

    def target() -> None:
        try:
            outcome["code"] = ingest(argv)
        except BaseException as err:  # reported below, in the test's thread
            outcome["error"] = err

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout_s)
    if thread.is_alive():
        raise AssertionError(
            f"ib-ingest did not finish within {timeout_s:.0f} s\n{cluster_logs(cluster)}"
        )
    if "error" in outcome:
        raise AssertionError(f"ib-ingest raised\n{cluster_logs(cluster)}") from outcome["error"]
    return outcome["code"]


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1.0)
        return sock.connect_ex(("127.0.0.1", port)) == 0


@contextmanager
def worker_pool(image: str) -> Iterator[Container]:
    """``docker run --network host IMAGE --worker_pool``: Beam's worker pool on port 50000."""
    assert not port_open(WORKER_POOL_PORT), f"port {WORKER_POOL_PORT} is taken: free it first"
    with Container(image, "--network", "host", command=("--worker_pool",)) as pool:

        def listening() -> bool:
            if not pool.state()["Running"]:
                raise AssertionError(f"the worker pool exited:\n{pool.logs()}")
            return port_open(WORKER_POOL_PORT)

        wait_for(listening, 120, f"the worker pool listening on {WORKER_POOL_PORT}")
        yield pool


def run_job(stack, cluster: Cluster, dataset: Path, collection: str, environment, tmp_path):
    """ib-ingest of ``dataset`` on ``cluster`` with Beam's ``environment`` flags; counters."""
    runner = [f for f in cluster.ingest_flags() if not f.startswith("--environment_")]
    metrics = tmp_path / "metrics.json"
    e = stack.endpoints
    argv = [
        "--input", str(dataset),
        "--collection", collection,
        # Written inside the worker's container (its /tmp), not on this machine.
        "--dead-letter", f"/tmp/{unique_name('ib-dead-letter')}/failures.jsonl",
        "--weaviate-url", e.weaviate_http,
        "--grpc-port", str(e.weaviate_grpc_port),
        "--model", TINY_ENV["IB_MODEL"],
        "--checkpoint", TINY_ENV["IB_CHECKPOINT"],
        "--vectorizer-url", e.vectorizer,
        "--metrics-json", str(metrics),
        *runner,
        *environment,
    ]  # fmt: skip
    code = run_ingest_within(argv, JOB_TIMEOUT_S, cluster)
    assert code == 0, cluster_logs(cluster)
    return json.loads(metrics.read_text())["counters"]


def assert_embedded_like_the_server(stack, client, dataset: Path, collection: str, counters):
    """Every object written, none failed, each vector the inference server's."""
    assert counters["written"] == len(EXPECTED_IDS), counters
    assert counters["failed"] == counters["read_failed"] == 0, counters
    assert count(client, collection) == len(EXPECTED_IDS)
    assert_vectors_like_the_server(stack, client.collections.get(collection), dataset, EXPECTED_IDS)


def test_docker_environment_runs_the_workers_in_the_image(
    stack, client, flink, dataset, job_image, tmp_path
):
    docker_environment = ["--environment_type=DOCKER", f"--environment_config={job_image}"]
    with WorkerContainers(job_image) as workers:
        counters = run_job(stack, flink, dataset, "BeamWorkerDocker", docker_environment, tmp_path)
    # The workers were containers of the image, running as its non-root user.
    assert workers.users, f"no container of {job_image} ran\n{cluster_logs(flink)}"
    assert set(workers.users.values()) == {"10001:10001"}
    assert_embedded_like_the_server(stack, client, dataset, "BeamWorkerDocker", counters)
    # The worker containers end with the job. (Beam then removes them, unless the worker
    # exited before Beam's `docker kill`, which then fails and skips the removal: Beam's
    # race, seen here; the fixture removes what is left.)
    wait_for(
        lambda: not containers_of(job_image, running_only=True), 120, "the worker containers' end"
    )


def test_worker_pool_of_the_image_serves_the_external_environment(
    stack, client, flink, dataset, job_image, tmp_path
):
    pool_environment = [
        "--environment_type=EXTERNAL",
        f"--environment_config=localhost:{WORKER_POOL_PORT}",
    ]
    with worker_pool(job_image) as pool:
        counters = run_job(stack, flink, dataset, "BeamWorkerPool", pool_environment, tmp_path)
        assert pool.state()["Running"], pool.logs()
        assert inspect("container", pool.name)["Config"]["User"] == "10001:10001"
    assert_embedded_like_the_server(stack, client, dataset, "BeamWorkerPool", counters)
