"""The console scripts as a user runs them: progress they can see, one-line start-up errors."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ib_vectorizer.server_process import free_ports
from pipelines.ingest.progress import progress_line
from pipelines.job_progress import Progress, format_seconds

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
    progress = [line.partition("ib_ingest: progress: ")[2] for line in lines]
    progress = [line for line in progress if line]
    phases = ("starting, ", "listing the input: ", "the first batches", "objects/s")
    assert progress and all(any(p in line for p in phases) for line in progress), progress
    assert any(line.startswith("read ") and "embedded" in line for line in progress), progress
    summary = [line for line in lines if "ib_ingest: done in " in line]
    assert len(summary) == 1, result.stderr
    assert "read 61, embedded 60, written 60, failed 1" in summary[0]
    assert "Traceback" not in result.stderr
    again = run("ib-ingest", *result.args[1:])  # unchanged: the failures file is replaced, quietly
    assert again.returncode == 0 and "unchanged 60" in again.stderr, again.stderr
    assert "WARNING" not in again.stderr, again.stderr
    failures = (tmp_path / "failed.jsonl").read_text().splitlines()
    assert len(failures) == 1 and "broken.jpg" in failures[0]


def test_beam_lines_a_user_cannot_act_on_are_dropped_and_others_kept():
    script = (
        "import logging\n"
        "from pipelines.command import console_logging\n"
        "console_logging()\n"
        "sink = logging.getLogger('apache_beam.io.filebasedsink')\n"
        "sink.warning('Deleting 1 existing files in target path matching: ')\n"
        "logging.warning('Resource module is not available for current platform')\n"
        "sink.warning('the sink says something else')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert "Deleting" not in result.stderr and "Resource module" not in result.stderr
    assert "the sink says something else" in result.stderr


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


def progress_at(elapsed_s: float, window_s: float = 0.0, before=None, **counts) -> Progress:
    return Progress(counts, elapsed_s, before or {}, window_s or elapsed_s)


def test_progress_line_says_the_phase_and_an_eta_from_the_recent_rate():
    assert progress_line(progress_at(12.0)) == "progress: starting, 12 s: nothing listed yet"
    listing = progress_line(progress_at(20.0, listed=4000))
    assert listing == "progress: listing the input: 4000 found so far"
    first = progress_line(progress_at(30.0, listed=5000, read=64, decoded=64, embedded=32))
    assert first.endswith("written 0, failed 0; decoding and embedding the first batches")
    assert "objects/s" not in first  # no 0.0 objects/s while the first batches are on their way
    counts = dict(listed=1000, read=400, decoded=300, embedded=250, written=200, failed=3)
    before = dict(counts, written=50)  # 150 written in the last 30 s, after a slow start
    line = progress_line(progress_at(100.0, 30.0, before, read_failed=2, **counts))
    assert line.startswith("progress: read 400, decoded 300, embedded 250, written 200, failed 5;")
    assert " 5.0 objects/s" in line  # the recent rate, not 200 / 100 s
    assert line.endswith("ETA 2 min 39 s")  # (1000 - 203) / 5 per second
    segments = progress_at(100.0, 30.0, before, segments=10, **counts)
    assert "ETA" not in progress_line(segments)  # segments: the number of objects is unknown
    assert format_seconds(3725) == "1 h 02 min" and format_seconds(125) == "2 min 05 s"
