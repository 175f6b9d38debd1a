"""Seeded mutants of real media, and the bombs, through the server and through ib-ingest.

Nothing may come back as a 500, a NaN or a dead server; the server stays within
its memory budget; ib-ingest finishes with every file either written (with a
finite unit vector) or dead-lettered with a reason in words.
"""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pytest

from .fuzz import REGRESSIONS, fuzz, memory_mib
from .hostile import SEEDS, bombs, mutants, text_mutants
from .server_process import ServerProcess, http_status
from .test_ingest import read_failures, run_ingest

FOLDER = {  # wire key → the ib-ingest folder that fixes the modality
    "images": "image",
    "audio": "audio",
    "video": "video",
    "depth": "depth",
    "thermal": "thermal",
    "imu": "imu",
}
SUFFIX = {"images": ".png", "audio": ".wav", "video": ".mp4", "depth": ".png", "thermal": ".png"}


@pytest.mark.parametrize("seed", [0, 1])
def test_mutants_through_the_server(seed):
    with ServerProcess(IB_MEMORY_BUDGET_MB="1280") as server:
        idle, _ = memory_mib(server.process.pid)
        findings = fuzz(server.url, count=40, seed=seed)
        assert server.exit_code() is None and http_status(server.url + "/.well-known/ready") == 204
        _, peak = memory_mib(server.process.pid)
    assert [(name, why) for name, why, _ in findings.problems] == []
    sent = {key: sum(counts.values()) for key, counts in findings.outcomes.items()}
    assert all(n >= 40 for n in sent.values()) and set(sent) == {*SEEDS, "texts"}
    assert peak - idle < 1.5 * 1024, f"the server went {peak - idle:.0f} MiB over idle"


def hostile_dataset(root, per_modality: int, seed: int) -> dict[str, str | None]:
    """Mutants and bombs in a tree ib-ingest reads; source id → what its dead letter says
    (a piece of it), or None where any outcome but a crash is fine."""
    expected: dict[str, str | None] = {}
    for key, folder in FOLDER.items():
        for number, (_, data) in enumerate(mutants(key, per_modality, seed)):
            relative = f"{folder}/mutant-{number}{SUFFIX.get(key, '.csv')}"
            (root / relative).parent.mkdir(parents=True, exist_ok=True)
            (root / relative).write_bytes(data)
            expected[relative] = None
    for number, (_, text) in enumerate(text_mutants(per_modality, seed)):
        relative = f"text/mutant-{number}.txt"
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_text(text)
        expected[relative] = None
    for number, bomb in enumerate(bombs()):
        relative = f"{FOLDER[bomb.key]}/bomb-{number}{SUFFIX.get(bomb.key, '.csv')}"
        (root / relative).write_bytes(bomb.data)
        expected[relative] = bomb.refused or "stored"
    for path in REGRESSIONS.glob("*/*"):  # inputs that once failed
        relative = f"{FOLDER.get(path.parent.name, 'text')}/regression-{path.name}"
        shutil.copy(path, root / relative)
        expected[relative] = None
    return expected


def test_mutants_and_bombs_through_ib_ingest(stack, client, tmp_path):
    expected = hostile_dataset(tmp_path / "bucket", per_modality=30, seed=3)
    failures_path = tmp_path / "failures.jsonl"
    assert run_ingest(stack, tmp_path / "bucket", "Hostile", failures_path) == 0
    failures = {row["id"]: row for row in read_failures(failures_path)}
    stored = {}
    for obj in client.collections.get("Hostile").iterator(include_vector=True):
        stored[obj.properties["source_id"]] = np.array(obj.vector["imagebind"])
    assert set(stored) | set(failures) == set(expected)
    assert not set(stored) & set(failures)
    for source_id, vector in stored.items():
        assert np.isfinite(vector).all() and abs(np.linalg.norm(vector) - 1) < 1e-4, source_id
    for row in failures.values():
        reason = row["error"]
        assert row["stage"] in ("read", "decode"), row
        assert "Traceback" not in reason and not reason.rstrip().endswith(":"), row
        assert not re.search(r"\b\w+(Error|Exception)\(", reason), row  # no exception's repr
        assert "failed unexpectedly" not in reason, row  # a decoder error no rule foresaw
    for source_id, outcome in expected.items():
        if outcome == "stored":
            assert source_id in stored, (source_id, failures.get(source_id))
        elif outcome is not None:
            assert outcome in failures[source_id]["error"], (source_id, failures.get(source_id))


def test_hostile_audio_and_video_cut_into_segments(stack, client, tmp_path):
    root = tmp_path / "bucket"
    expected = {
        source: outcome
        for source, outcome in hostile_dataset(root, per_modality=6, seed=4).items()
        if source.split("/")[0] in ("audio", "video")
    }
    for folder in ("image", "depth", "thermal", "imu", "text"):
        for path in (root / folder).iterdir():
            path.unlink()
    failures_path = tmp_path / "failures.jsonl"
    assert run_ingest(stack, root, "HostileSegments", failures_path, "--segment-seconds", "1") == 0
    failures = {row["id"]: row for row in read_failures(failures_path)}
    parents = set()
    for obj in client.collections.get("HostileSegments").iterator(include_vector=True):
        assert np.isfinite(np.array(obj.vector["imagebind"])).all()
        parents.add(obj.properties.get("parent_id") or obj.properties["source_id"])
    assert parents | set(failures) == set(expected)
    for source_id, outcome in expected.items():
        if outcome not in (None, "stored"):
            assert outcome in failures[source_id]["error"], (source_id, failures.get(source_id))
    assert json.dumps(list(failures.values()))  # every reason is plain text
