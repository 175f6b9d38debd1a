"""ib-ingest unchanged on Flink and Spark: spread over worker processes, surviving a lost worker.

Each test runs the job on the engine's cluster with the SDK harness in
separate processes (Beam's PROCESS environment) and checks what landed in
Weaviate against the DirectRunner's result: one object per input, the same
vectors, the same dead letters.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from pipelines.runners.cluster import Cluster

from .conftest import (
    Run,
    copy_of,
    count,
    engine_cluster,
    flags,
    record,
    run_ingest,
    stored_vectors,
)

KILL_AFTER_OBJECTS = 60  # stored objects before a worker is killed: the job is mid-way


@pytest.fixture(scope="module", params=["flink", "spark"])
def cluster(request, tmp_path_factory):
    yield from engine_cluster(request.param, tmp_path_factory)


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def layout(cluster: Cluster, parallelism: int | None = None) -> str:
    text = f"{cluster.workers} x {cluster.slots}"
    if cluster.engine == "flink":
        text += f" (p={parallelism or cluster.workers * cluster.slots})"
    return text


def assert_same_as_direct(client, collection: str, baseline, dataset) -> None:
    """Exactly one object per valid input, each vector the DirectRunner's."""
    assert count(client, collection) == dataset.valid
    vectors = stored_vectors(client, collection)
    assert vectors.keys() == baseline.keys()
    worst = min(cosine(vectors[k], baseline[k]) for k in baseline)
    assert worst >= 0.9999, f"lowest cosine with the DirectRunner's vectors: {worst:.6f}"


def assert_exact_dead_letters(run: Run, dataset) -> None:
    ids = [failure["id"] for failure in run.failures]
    assert sorted(ids) == sorted(dataset.corrupt), "each corrupt file once, nothing else"
    assert all(f["stage"] in ("read", "decode") and f["error"] for f in run.failures)


def test_job_runs_spread_over_worker_processes(
    cluster, stack, client, dataset, baseline, tmp_path, caplog
):
    name = f"{cluster.engine.capitalize()}Spread"
    with caplog.at_level("INFO", logger="ib_ingest"):
        run = run_ingest(stack, dataset.root, name, tmp_path, flags(cluster))
    assert run.status == 0
    record(cluster.engine, layout(cluster), run, "none", client, name)
    assert run.counters["read"] == dataset.valid + len(dataset.corrupt)
    assert run.counters["written"] == dataset.valid and run.counters["failed"] == len(
        dataset.corrupt
    )
    assert_exact_dead_letters(run, dataset)
    assert_same_as_direct(client, name, baseline, dataset)
    for stage in ("decode", "embed"):  # the work ran in several SDK worker processes at once
        assert len(run.workers[stage]) >= 2, run.workers
    if cluster.engine == "flink":  # Flink's accumulators move while tasks run
        progress = [r.getMessage() for r in caplog.records if "progress:" in r.getMessage()]
        assert any(" written 0," not in line for line in progress), progress
    done = [r.getMessage() for r in caplog.records if r.getMessage().startswith("done in")]
    assert done and f"written {dataset.valid}, failed {len(dataset.corrupt)}" in done[0]


@pytest.mark.parametrize("cluster", ["flink"], indirect=True)  # Spark's is its workers' cores
def test_parallelism_sets_the_worker_processes(cluster, stack, client, dataset, tmp_path):
    for parallelism in (1, 2):
        name = f"FlinkP{parallelism}"
        run = run_ingest(stack, dataset.root, name, tmp_path, flags(cluster, parallelism))
        assert run.status == 0 and run.counters["written"] == dataset.valid
        assert len(run.workers["decode"]) == parallelism, run.workers
        record("flink", layout(cluster, parallelism), run, "none", client, name)


class KillWhenWriting(threading.Thread):
    """SIGKILL ``pid`` once the collection holds ``threshold`` objects (the job is mid-way)."""

    def __init__(self, stack, collection: str, pid: int, threshold: int) -> None:
        super().__init__(daemon=True)
        self.stack, self.collection, self.pid, self.threshold = stack, collection, pid, threshold
        self.stored_at_kill: int | None = None
        self.stop = threading.Event()

    def run(self) -> None:
        client = self.stack.client()
        try:
            while not self.stop.wait(0.25):
                try:
                    stored = count(client, self.collection)
                except Exception:  # not created yet
                    continue
                if stored >= self.threshold:
                    os.kill(self.pid, signal.SIGKILL)
                    self.stored_at_kill = stored
                    return
        finally:
            client.close()


def engine_saw_failure(cluster: Cluster, job_name: str, log_before: int) -> bool:
    """Whether the engine recorded the lost worker (a Flink restart, a lost Spark executor)."""
    if cluster.engine == "flink":
        with urllib.request.urlopen(f"{cluster.web_ui}/jobs/overview", timeout=10) as answer:
            jobs = json.loads(answer.read())["jobs"]
        jid = next(job["jid"] for job in jobs if job["name"] == job_name)
        with urllib.request.urlopen(f"{cluster.web_ui}/jobs/{jid}/exceptions", timeout=10) as a:
            return bool(json.loads(a.read())["exceptionHistory"]["entries"])
    text = Path(cluster.directory / "logs/job-server.log").read_text(errors="replace")
    return "Lost executor" in text[log_before:] or "Lost task" in text[log_before:]


def test_a_lost_worker_costs_nothing(cluster, stack, client, dataset, baseline, tmp_path):
    """kill -9 of a TaskManager or Spark worker mid-job: the engine retries, the result is exact."""
    source = copy_of(dataset, tmp_path / "data")
    name, job = f"{cluster.engine.capitalize()}Fault", f"ib-fault-{cluster.engine}"
    victim = next(p for p in cluster.processes if p.role.startswith(cluster.worker_role()))
    job_log = cluster.directory / "logs/job-server.log"
    log_before = len(job_log.read_text(errors="replace"))
    killer = KillWhenWriting(stack, name, victim.pid, KILL_AFTER_OBJECTS)
    killer.start()
    try:
        # Flink at parallelism 2 (one slot on each TaskManager) restarts on the survivor's slots.
        run = run_ingest(stack, source, name, tmp_path, flags(cluster, 2, job_name=job))
    finally:
        killer.stop.set()
        killer.join()
    assert killer.stored_at_kill is not None, "the job ended before a worker was killed"
    assert killer.stored_at_kill < dataset.valid
    assert run.status == 0
    assert engine_saw_failure(cluster, job, log_before)
    worker = "TaskManager" if cluster.engine == "flink" else "worker"
    record(cluster.engine, layout(cluster, 2), run, f"kill -9 a {worker}", client, name)
    assert_same_as_direct(client, name, baseline, dataset)
    assert_exact_dead_letters(run, dataset)
    # The summary counts each object once: written now, or found written by the lost attempt.
    assert run.done == dataset.valid, run.counters
    assert run.counters["failed"] == len(dataset.corrupt)
    for obj in client.collections.get(name).iterator():  # no half-written object
        assert obj.properties["content_hash"] and obj.properties["source_id"]

    # The lost worker back (what `ib-runner start` on this folder does), then a re-run of the
    # edited tree: only the changes are embedded, the removed deleted.
    assert cluster.replace_lost_workers() == [victim.role]
    removed = sorted((source / "image").glob("image-000*.jpg"))[:10]
    for path in removed:
        path.unlink()
    (source / "text/new-0.txt").write_text("a new caption about a lighthouse")
    (tmp_path / "rerun").mkdir()
    rerun = run_ingest(stack, source, name, tmp_path / "rerun", flags(cluster), "--delete-missing")
    assert rerun.status == 0
    assert rerun.counters["unchanged"] == dataset.valid - len(removed)
    assert rerun.counters["written"] == 1 and rerun.counters["deleted"] == len(removed)
    assert count(client, name) == dataset.valid - len(removed) + 1


def manifest_rows(dataset) -> list[dict]:
    """Objects of three fields (image, caption, audio), one of them without audio."""
    images = sorted((dataset.root / "image").glob("image-*.jpg"))[:12]
    sounds = sorted((dataset.root / "audio").glob("audio-*.wav"))[:12]
    return [
        {
            "id": f"row-{i}",
            "image": str(image),
            "text_caption": f"caption of photo {i}",
            "audio": str(sound) if i % 4 else None,
        }
        for i, (image, sound) in enumerate(zip(images, sounds, strict=True))
    ]


EMBED_ELSEWHERE = {"flink": "server", "spark": "weaviate"}  # each engine tries one more mode


def test_manifest_of_several_fields_embedded_elsewhere(cluster, stack, client, dataset, tmp_path):
    """A JSONL manifest, three fields per object, embedded by our server (Flink) or by
    Weaviate's module (Spark): the same objects and vectors as on the DirectRunner."""
    embed = EMBED_ELSEWHERE[cluster.engine]
    manifest = tmp_path / "manifest.jsonl"  # beside the dataset, which other tests read whole
    rows = manifest_rows(dataset)
    manifest.write_text("".join(json.dumps(row) + "\n" for row in rows))
    results = {}
    for runner, beam_flags in (("Direct", []), (cluster.engine.capitalize(), flags(cluster))):
        name = f"Manifest{runner}{cluster.engine.capitalize()}"
        run = run_ingest(stack, manifest, name, tmp_path, beam_flags, "--embed", embed)
        assert run.status == 0 and run.failures == []
        assert run.counters["written"] == len(rows)
        results[runner] = stored_vectors(client, name)
    direct, engine = results.values()
    assert direct.keys() == engine.keys() == {row["id"] for row in rows}
    assert min(cosine(direct[k], engine[k]) for k in direct) >= 0.9999


def test_segments_of_long_media(cluster, stack, client, dataset, tmp_path):
    """``--segment-seconds``: the same segments and vectors as the DirectRunner's."""
    media = tmp_path / "media"
    for folder in ("audio", "video"):
        (media / folder).mkdir(parents=True)
        for path in sorted((dataset.root / folder).glob(f"{folder}-000*"))[:4]:
            (media / folder / path.name).write_bytes(path.read_bytes())
    results = {}
    for runner, beam_flags in (("Direct", []), (cluster.engine.capitalize(), flags(cluster))):
        name = f"Segments{runner}{cluster.engine.capitalize()}"
        run = run_ingest(stack, media, name, tmp_path, beam_flags, "--segment-seconds", "1")
        assert run.status == 0 and run.failures == []
        assert run.counters["segments"] > 8
        results[runner] = stored_vectors(client, name)
    direct, engine = results.values()
    assert direct.keys() == engine.keys()
    assert min(cosine(direct[k], engine[k]) for k in direct) >= 0.9999


def test_tags_on_the_cluster(cluster, stack, client, dataset, tmp_path):
    """``ib-ingest --labels`` and ``ib-tag`` with the cluster's flags: a new label set
    from the stored vectors alone (vectors unchanged), and the first set back gives
    exactly the tags the ingest stored."""
    from pipelines.tag.command import main as ib_tag

    from ..server_process import TINY_ENV

    media = tmp_path / "media"
    for folder in sorted(p.name for p in dataset.root.iterdir() if p.is_dir()):
        (media / folder).mkdir(parents=True)
        for path in sorted((dataset.root / folder).iterdir())[:12]:
            (media / folder / path.name).write_bytes(path.read_bytes())
    first, second = tmp_path / "first.txt", tmp_path / "second.txt"
    first.write_text("dog\ncat\nrain\nengine\nmusic\nwalking\n")
    second.write_text("indoors\noutdoors\nanimal\nmachine\n")
    name, beam_flags = f"Tags{cluster.engine.capitalize()}", flags(cluster)
    run = run_ingest(stack, media, name, tmp_path, beam_flags, "--labels", str(first))
    assert run.status == 0 and run.counters["written"] > 0
    written = run.counters["written"]

    def tags() -> dict[str, list[str]]:
        objects = client.collections.get(name).iterator(return_properties=["source_id", "labels"])
        return {o.properties["source_id"]: o.properties["labels"] for o in objects}

    def tag(labels: Path) -> dict[str, int]:
        e, metrics = stack.endpoints, tmp_path / "tag.json"
        status = ib_tag(
            ["--collection", name, "--labels", str(labels),
             "--weaviate-url", e.weaviate_http, "--grpc-port", str(e.weaviate_grpc_port),
             "--model", TINY_ENV["IB_MODEL"], "--checkpoint", TINY_ENV["IB_CHECKPOINT"],
             "--dead-letter", str(tmp_path / "tag.jsonl"), "--metrics-json", str(metrics),
             *beam_flags]
        )  # fmt: skip
        assert status == 0
        return json.loads(metrics.read_text())["counters"]

    ingested, vectors = tags(), stored_vectors(client, name)
    assert len(ingested) == written and all(len(labels) == 5 for labels in ingested.values())
    every = {"read": written, "tagged": written, "updated": written, "failed": 0}
    assert tag(second) == every
    new_set = {"indoors", "outdoors", "animal", "machine"}
    assert all(set(labels) <= new_set for labels in tags().values())
    assert tag(first) == every
    assert tags() == ingested
    after = stored_vectors(client, name)
    assert all(np.array_equal(after[k], vectors[k]) for k in vectors)
