"""The scale benchmark and the long-recording benchmark, run small as commands."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from benchmarks.scale_dataset import PLAN_FILE, split_counts, write_dataset

from .server_process import TINY_ENV

TINY = ["--model", TINY_ENV["IB_MODEL"], "--checkpoint", TINY_ENV["IB_CHECKPOINT"]]
ROOT = Path(__file__).resolve().parent.parent  # where ``python -m benchmarks.<name>`` runs


def bench(name: str, *args: str) -> subprocess.CompletedProcess:
    """``python -m benchmarks.<name> ARGS`` with the tiny model, as a user would run it."""
    return subprocess.run(
        [sys.executable, "-m", f"benchmarks.{name}", *args, *TINY],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=ROOT,
    )


def test_the_mix_adds_up_and_has_corrupt_files():
    counts, corrupt = split_counts(100_000)
    assert sum(counts.values()) + corrupt == 100_000
    assert corrupt == 1000
    assert counts["image"] > counts["text"] > counts["imu"] > counts["audio"] > counts["video"]


def test_the_dataset_mixes_modalities_in_each_folder_and_is_reused(tmp_path):
    root = tmp_path / "data"
    plan = write_dataset(root, 70, seed=3)
    files = sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith("."))
    assert len(files) == 70
    assert {p.suffix for p in files} >= {".jpg", ".txt", ".csv", ".mp4"}
    assert len({p.parent for p in files}) == 1  # one folder holds every modality
    assert len({p.read_bytes() for p in files}) == 70  # no two files alike
    assert len(plan.corrupt) == 1 and (root / plan.corrupt[0]).exists()
    saved = json.loads((root / PLAN_FILE).read_text())
    assert saved["corrupt"] == plan.corrupt
    assert write_dataset(root, 70, seed=3).corrupt == plan.corrupt  # reused, not rewritten


def test_scale_benchmark_reports_and_checks_everything(tmp_path):
    result = bench("ingest_scale", "--objects", "60", "--dataset", str(tmp_path / "data"))
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    out = result.stdout
    for line in (
        "ok  dead letters are the corrupt files exactly",
        "ok  collection holds 59 objects",
        "ok  re-run wrote nothing",
        "ok  re-run found 59 unchanged",
    ):
        assert line in out, out
    for row in ("| image |", "| text |", "| imu |", "| audio |", "| video |"):
        assert row in out, out
    for name in ("ib-ingest (process tree)", "weaviate", "vectorizer"):
        assert f"| peak RSS: {name} |" in out, out
    assert (tmp_path / "data-runs" / "first.log").exists()


def test_long_recording_benchmark_prints_peak_memory_per_length():
    result = bench("long_audio_memory", "--minutes", "0.5", "1")
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    rows = [line for line in result.stdout.splitlines() if line.startswith("| 0.5 min |")]
    assert rows and "| 3 |" in rows[0], result.stdout  # 30 s in segments of 10 s
    assert "peak RSS growth from 0.5 to 1 min" in result.stdout


def test_throughput_per_tenth_is_timed_from_the_first_object():
    from benchmarks.ingest_scale import tenths

    samples = [(0.0, 0), (5.0, 0)] + [(5.0 + t, 10 * t) for t in range(1, 101)]  # 10/s
    assert [round(rate, 6) for rate in tenths(samples, 1000)] == [10.0] * 10
    assert len(tenths(samples[:50], 1000)) == 4  # the run is not over: the tenths so far


def test_a_job_run_closes_its_progress_series_with_the_totals(tmp_path):
    from benchmarks.ingest_job import run_job

    job = (
        "import json, sys\n"
        "line = 'progress: read 10, embedded 8, written 8, failed 1; 9 objects/s'\n"
        "print(line, file=sys.stderr)\n"
        "counters = {'written': 10, 'failed': 1, 'read_failed': 1}\n"
        "json.dump({'counters': counters}, open(sys.argv[-1], 'w'))\n"
    )
    run = run_job([sys.executable, "-c", job], tmp_path / "metrics.json", tmp_path / "job.log")
    assert [done for _, done in run.done_at] == [9, 12]  # the last progress line, then the end
    assert "progress: read 10" in (tmp_path / "job.log").read_text()
