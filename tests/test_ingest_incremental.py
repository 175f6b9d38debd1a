"""Re-runs of ib-ingest redo only what changed, and a killed job's re-run leaves nothing wrong."""

from __future__ import annotations

import logging
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from weaviate.exceptions import WeaviateQueryError

from ib_vectorizer.bench.payloads import image_payload

from .fixture_data import INPUTS
from .server_process import TINY_ENV
from .test_ingest import DIRECTORY_FILES, copy_dataset, count, run_ingest


@pytest.fixture
def tree(tmp_path) -> Path:
    return copy_dataset(tmp_path / "tree")


def summary_of(caplog) -> str:
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("done in")]
    return lines[-1]


def snapshot(client, name: str) -> dict[str, tuple[dict, np.ndarray]]:
    """Every object of a collection: properties and vector, by uuid."""
    collection = client.collections.get(name)
    return {
        str(o.uuid): (dict(o.properties), np.array(o.vector["imagebind"]))
        for o in collection.iterator(include_vector=True)
    }


def test_an_unchanged_tree_is_skipped_and_force_redoes_it(stack, client, tree, tmp_path, caplog):
    objects = len(DIRECTORY_FILES) + 1
    failures = tmp_path / "f.jsonl"
    with caplog.at_level(logging.INFO, logger="ib_ingest"):
        assert run_ingest(stack, tree, "Again", failures) == 0
        assert f"embedded {objects}, written {objects}, failed 0, unchanged 0" in summary_of(caplog)
        before = snapshot(client, "Again")
        assert run_ingest(stack, tree, "Again", failures) == 0
        assert f"embedded 0, written 0, failed 0, unchanged {objects}" in summary_of(caplog)
        assert snapshot(client, "Again").keys() == before.keys()
        assert run_ingest(stack, tree, "Again", failures, "--force") == 0
        assert f"embedded {objects}, written {objects}, failed 0, unchanged 0" in summary_of(caplog)
    assert all(props["content_hash"] for props, _ in before.values())


def test_a_rerun_after_edits_equals_a_fresh_ingest(stack, client, tree, tmp_path, caplog):
    failures = tmp_path / "f.jsonl"
    assert run_ingest(stack, tree, "Edited", failures) == 0
    shutil.copy(INPUTS / "image_gray.png", tree / "image" / "cat.jpg")  # changed
    (tree / "text" / "note.txt").write_text("rain on a tin roof")  # changed
    shutil.copy(INPUTS / "thermal_b.png", tree / "thermal" / "new.png")  # added
    (tree / "audio" / "tone.wav").unlink()  # deleted
    with caplog.at_level(logging.INFO, logger="ib_ingest"):
        assert run_ingest(stack, tree, "Edited", failures, "--delete-missing") == 0
        summary = summary_of(caplog)
    objects = len(DIRECTORY_FILES) + 1
    assert f"embedded 3, written 3, failed 0, unchanged {objects - 3}, deleted 1" in summary
    assert run_ingest(stack, tree, "FreshlyIngested", failures) == 0
    edited, fresh = snapshot(client, "Edited"), snapshot(client, "FreshlyIngested")
    assert edited.keys() == fresh.keys() and len(edited) == objects
    for uuid, (properties, vector) in fresh.items():
        assert edited[uuid][0] == properties, properties["source_id"]
        np.testing.assert_allclose(edited[uuid][1], vector, atol=1e-6)


def test_a_job_killed_halfway_then_rerun_leaves_one_right_object_per_input(stack, client, tmp_path):
    tree = tmp_path / "photos"
    (tree / "image").mkdir(parents=True)
    rng = np.random.default_rng(7)
    total = 400
    for i in range(total):
        (tree / "image" / f"{i:04d}.jpg").write_bytes(image_payload(rng, size=(160, 120)))
    e = stack.endpoints
    command = [
        str(Path(sys.executable).parent / "ib-ingest"), "--input", str(tree),
        "--collection", "Killed", "--weaviate-url", e.weaviate_http,
        "--grpc-port", str(e.weaviate_grpc_port), "--batch-size", "4",
        "--dead-letter", str(tmp_path / "f.jsonl"),
        "--model", TINY_ENV["IB_MODEL"], "--checkpoint", TINY_ENV["IB_CHECKPOINT"],
    ]  # fmt: skip
    job = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    written = 0
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and job.poll() is None:
        try:
            written = count(client, "Killed") if client.collections.exists("Killed") else 0
        except WeaviateQueryError:  # in the schema already, its shard not made yet
            written = 0
        if written >= 8:
            break
        time.sleep(0.05)
    job.send_signal(signal.SIGKILL)
    job.wait()
    assert 0 < written < total, f"the job was not caught halfway ({written} of {total})"

    assert run_ingest(stack, tree, "Killed", tmp_path / "f.jsonl") == 0
    assert count(client, "Killed") == total
    assert run_ingest(stack, tree, "KilledReference", tmp_path / "f.jsonl") == 0
    killed, reference = snapshot(client, "Killed"), snapshot(client, "KilledReference")
    assert killed.keys() == reference.keys()
    for uuid, (properties, vector) in reference.items():
        assert killed[uuid][0] == properties
        np.testing.assert_allclose(killed[uuid][1], vector, atol=1e-6)
