"""ib-ingest on a real Flink and a real Spark cluster (`make dist-test`), against the real Weaviate.

One stack (Weaviate + our inference server, tiny model), one dataset and one
DirectRunner baseline serve the whole session; each engine's cluster (2
workers x 2 slots, started by ib-runner's own code) lives for its module and
is stopped after it, leaving no process. Each run's figures go into
:data:`REPORT` rows, written as a Markdown table to ``$IB_DIST_REPORT`` (if
set) when the session ends.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from ib_vectorizer.server_process import free_port
from pipelines.ingest.command import main as ingest
from pipelines.runners.cluster import Cluster, start_cluster

from ..conftest import tiny_stack
from ..server_process import TINY_ENV
from .dataset import DistDataset, write_dataset

OBJECTS = 600
REPORT: list[dict] = []


@dataclass
class Run:
    """One ib-ingest run: its exit status, counters, workers per stage and dead letters."""

    status: int
    counters: dict[str, int]
    workers: dict[str, dict[str, int]]
    elapsed_s: float
    failures: list[dict]

    @property
    def done(self) -> int:
        return self.counters["written"] + self.counters["unchanged"]


@pytest.fixture(scope="session")
def stack(tmp_path_factory):
    """One stack for the session: the clusters' jobs all write into it."""
    with tiny_stack(tmp_path_factory.mktemp("stack")) as running:
        yield running


@pytest.fixture(scope="session")
def client(stack):
    connection = stack.client()
    yield connection
    connection.close()


@pytest.fixture(scope="session")
def dataset(tmp_path_factory) -> DistDataset:
    return write_dataset(tmp_path_factory.mktemp("dist-dataset"), objects=OBJECTS)


@pytest.fixture(scope="session")
def baseline(stack, client, dataset, tmp_path_factory) -> dict[str, np.ndarray]:
    """Every valid object's vector as the DirectRunner stores it."""
    run = run_ingest(stack, dataset.root, "DistDirect", tmp_path_factory.mktemp("direct"), [])
    assert run.status == 0 and run.counters["written"] == dataset.valid
    record("DirectRunner", "1 process", run, "none", client, "DistDirect")
    return stored_vectors(client, "DistDirect")


def engine_cluster(engine: str, tmp_path_factory):
    cluster, _ = start_cluster(
        engine, tmp_path_factory.mktemp(engine), workers=2, slots=2, job_port=free_port()
    )
    try:
        yield cluster
    finally:
        cluster.stop()


def run_ingest(
    stack, source: Path, collection: str, folder: Path, beam_flags: list[str], *extra: str
) -> Run:
    """``ib-ingest`` in this process (the job itself runs where ``beam_flags`` send it)."""
    e = stack.endpoints
    metrics, failures = folder / f"{collection}-metrics.json", folder / f"{collection}.jsonl"
    status = ingest(
        [
            "--input", str(source), "--collection", collection,
            "--dead-letter", str(failures), "--metrics-json", str(metrics),
            "--weaviate-url", e.weaviate_http, "--grpc-port", str(e.weaviate_grpc_port),
            "--vectorizer-url", e.vectorizer,
            "--model", TINY_ENV["IB_MODEL"], "--checkpoint", TINY_ENV["IB_CHECKPOINT"],
            "--progress-seconds", "2",
            *extra, *beam_flags,
        ]
    )  # fmt: skip
    report = json.loads(metrics.read_text()) if metrics.exists() else {}
    lines = failures.read_text().splitlines() if failures.exists() else []
    return Run(
        status,
        report.get("counters", {}),
        report.get("workers", {}),
        report.get("elapsed_s", 0.0),
        [json.loads(line) for line in lines if line.strip()],
    )


def flags(cluster: Cluster, parallelism: int | None = None, job_name: str | None = None):
    chosen = [f for f in cluster.ingest_flags() if not f.startswith("--parallelism=")]
    if cluster.engine == "flink":
        chosen.append(f"--parallelism={parallelism or cluster.workers * cluster.slots}")
    return chosen + ([f"--job_name={job_name}"] if job_name else [])


def stored_vectors(client, name: str) -> dict[str, np.ndarray]:
    collection = client.collections.get(name)
    vectors: dict[str, np.ndarray] = {}
    for obj in collection.iterator(include_vector=True):
        source_id = obj.properties["source_id"]
        assert source_id not in vectors, f"{source_id} stored twice"
        vectors[source_id] = np.asarray(obj.vector["imagebind"], dtype=np.float64)
    return vectors


def count(client, name: str) -> int:
    return client.collections.get(name).aggregate.over_all(total_count=True).total_count


def copy_of(dataset: DistDataset, target: Path) -> Path:
    shutil.copytree(dataset.root, target)
    return target


def record(engine: str, layout: str, run: Run, fault: str, client, collection: str) -> None:
    REPORT.append(
        {
            "engine": engine,
            "layout": layout,
            "objects": run.done,
            "wall_s": run.elapsed_s,
            "fault": fault,
            "stored": count(client, collection),
            "written": run.counters.get("written", 0),
            "unchanged": run.counters.get("unchanged", 0),
            "dead_letters": len(run.failures),
        }
    )


def pytest_sessionfinish(session, exitstatus) -> None:
    target = os.environ.get("IB_DIST_REPORT")
    if not target or not REPORT:
        return
    lines = [
        "| engine | workers x slots (parallelism) | objects | wall s | objects/s | fault "
        "| stored | written + unchanged | dead letters |",
        "|---|---|---:|---:|---:|---|---:|---:|---:|",
    ]
    for row in REPORT:
        rate = row["objects"] / row["wall_s"] if row["wall_s"] else 0.0
        lines.append(
            f"| {row['engine']} | {row['layout']} | {row['objects']} | {row['wall_s']:.1f} "
            f"| {rate:.1f} | {row['fault']} | {row['stored']} "
            f"| {row['written']} + {row['unchanged']} | {row['dead_letters']} |"
        )
    Path(target).write_text("\n".join(lines) + "\n")
