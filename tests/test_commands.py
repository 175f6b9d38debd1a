"""The console scripts as a user runs them: progress they can see, one-line start-up errors."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ib_vectorizer.server_process import free_ports
from pipelines.ingest.progress import format_seconds, progress_line

from .fixture_data import INPUTS
from .server_process import TINY_ENV

BIN = Path(sys.executable).parent
TINY = ["--model", TINY_ENV["IB_MODEL"], "--checkpoint", TINY_ENV["IB_CHECKPOINT"]]


def run(command: str, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("IB_MODEL", "IB_CHECKPOINT")}
    return subprocess.run(
        [str(BIN / command), *args],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        cwd=cwd,
    )


def test_ib_ingest_shows_progress_and_the_closing_summary(stack, tmp_path):
    dataset = tmp_path / "dataset"
    (dataset / "image").mkdir(parents=True)
    for i in range(60):
        shutil.copy(INPUTS / "image_rgb.jpg", dataset / "image" / f"{i:03d}.jpg")
    (dataset / "image" / "broken.jpg").write_bytes(b"not a jpeg")
    e = stack.endpoints
    result = run(
        "ib-ingest", "--input", str(dataset), "--collection", "Progress", *TINY,
        "--weaviate-url", e.weaviate_http, "--grpc-port", str(e.weaviate_grpc_port),
        "--dead-letter", str(tmp_path / "failed.jsonl"), "--progress-seconds", "0.2",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()
    progress = [line for line in lines if "ib_ingest: progress: read " in line]
    assert progress, result.stderr
    assert all("embedded" in p and "written" in p and "objects/s" in p for p in progress)
    summary = [line for line in lines if "ib_ingest: done in " in line]
    assert len(summary) == 1, result.stderr
    assert "read 61, embedded 60, written 60, failed 1" in summary[0]
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("command", "args", "expected"),
    [
        ("ib-ingest", ["--collection", "C"], "the following arguments are required: --input"),
        ("ib-ingest", ["--input", "{data}", "--collection", "C", "--batch-size", "many"],
         "invalid int value"),
        ("ib-ingest", ["--input", "{data}", "--collection", "C", "--checkpoint", "{missing}"],
         "ib-vectorizer download"),
        ("ib-ingest", ["--input", "{data}", "--collection", "C", "--weaviate-url", "{dead}"],
         "nothing answers at"),
        ("ib-ingest", ["--input", "{data}", "--collection", "C", "--model", "{bad_model}",
                       "--checkpoint", "{tiny_weights}"], "imu_channels must be 6"),
        ("ib-ingest", ["--input", "{data}", "--collection", "C", "--segment-seconds", "5",
                       "--embed", "server"], "use --embed local"),
        ("ib-ingest", ["--input", "{data}", "--collection", "C", "--segment-seconds", "5",
                       "--segment-overlap", "5"], "overlap must be"),
        ("ib-ingest", ["--input", "{data}", "--collection", "C", "--direct_num_workers", "2",
                       "--direct_running_mode", "multi_threading"], "loses objects"),
        ("ib-query", ["--collection", "C", "--near-text", "x", "--checkpoint", "{missing}"],
         "ib-vectorizer download"),
        ("ib-query", ["--collection", "C", "--near-text", "x", "--limit", "0"], "--limit"),
        ("ib-query", ["--collection", "C"], "give what to search for"),
        ("ib-stack", ["--checkpoint", "{missing}"], "ib-vectorizer download"),
        ("ib-stack", ["--dtype", "float8"], "invalid choice"),
        ("ib-stack", ["--nodes", "0"], "--nodes must be 1 or more"),
        ("ib-ingest", ["--input", "{data}", "--collection", "C", "--weaviate-url", "{dead},{dead}",
                       "--grpc-port", "1,2,3"], "gives 3 ports for 2 Weaviate URLs"),
        ("ib-ingest", ["--input", "{data}", "--collection", "C", "--replication-factor", "0"],
         "--replication-factor must be 1 or more"),
        ("ib-ingest", ["--input", "{data}", "--collection", "C", "--consistency-level", "MOST"],
         "invalid choice"),
        ("ib-query", ["--collection", "C", "--near-text", "x", "--weaviate-url", "{dead}",
                      "--consistency-level", "SOME"], "invalid choice"),
    ],
)  # fmt: skip
def test_start_up_errors_are_one_line_and_start_nothing(tmp_path, command, args, expected):
    data = tmp_path / "data"
    (data / "image").mkdir(parents=True)
    shutil.copy(INPUTS / "image_rgb.jpg", data / "image" / "a.jpg")
    bad_model = tmp_path / "bad.json"
    bad_model.write_text('{"imu_channels": 3}')
    dead = f"http://127.0.0.1:{free_ports(1)[0]}"
    values = {
        "data": str(data),
        "missing": str(tmp_path / "absent.pth"),
        "dead": dead,
        "bad_model": str(bad_model),
        "tiny_weights": TINY_ENV["IB_CHECKPOINT"],
    }
    stack_dir = tmp_path / "stack"
    where = [] if "--weaviate-url" in args else ["--data-dir", str(stack_dir)]
    result = run(command, *[a.format(**values) for a in args], *where)
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"{command}: ") and expected in lines[0], lines[0]
    assert not stack_dir.exists()  # nothing was started


def test_progress_line_has_an_eta_once_the_input_size_is_known():
    counts = dict.fromkeys(("read", "read_failed", "decoded", "embedded", "written", "failed"), 0)
    counts.update(read=100, read_failed=2)
    assert "ETA" not in progress_line(counts, 5.0)  # still listing: the total is unknown
    counts.update(listed=1000, read=400, decoded=300, embedded=250, written=200, failed=3)
    line = progress_line(counts, 10.0)
    assert line.startswith("progress: read 400, embedded 250, written 200, failed 5; 20.0")
    assert line.endswith("ETA 40 s")  # (1000 - 203) / 20 per second
    assert format_seconds(3725) == "1 h 02 min" and format_seconds(125) == "2 min 05 s"
