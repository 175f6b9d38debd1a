"""``ib-ingest`` run as users run it, a separate process, and watched from outside.

The scale and long-recording benchmarks measure the real command, not a
function call: :func:`run_job` starts it, times its progress lines as they
arrive and samples the peak memory of its whole process tree (Beam's workers
and FFmpeg included), then reads its counters from ``--metrics-json``.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ib_vectorizer.options import ModelOptions, as_flags

if TYPE_CHECKING:
    from pipelines.stack import Endpoints

# ib-ingest's progress line: its unchanged, written and failed counts are the objects done.
_PROGRESS = re.compile(
    r"progress: read \d+, (?:unchanged (\d+), )?(?:decoded \d+, )?embedded \d+, "
    r"written (\d+), failed (\d+)"
)
_PAGE = os.sysconf("SC_PAGE_SIZE")


# -- memory --------------------------------------------------------------------------------------


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as handle:
            return [int(p) for p in handle.read().split()]
    except OSError:
        return []


def tree_rss(pid: int) -> int:
    """Resident bytes of ``pid`` and all its descendants, now."""
    total, todo = 0, [pid]
    while todo:
        current = todo.pop()
        try:
            with open(f"/proc/{current}/statm") as handle:
                total += int(handle.read().split()[1]) * _PAGE
        except OSError:
            continue  # it just exited
        todo.extend(_children(current))
    return total


def peak_rss(pid: int) -> int:
    """The kernel's high-water mark of ``pid``'s resident memory (VmHWM), in bytes."""
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def mib(value: int) -> str:
    return f"{value / 2**20:,.0f} MiB"


class TreePeak:
    """Samples a process tree's RSS twice a second; ``peak`` is the largest sum seen."""

    def __init__(self, pid: int, every_s: float = 0.5) -> None:
        self.pid, self.every_s, self.peak = pid, every_s, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            self.peak = max(self.peak, tree_rss(self.pid))

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


# -- one job -------------------------------------------------------------------------------------


@dataclass
class JobRun:
    elapsed_s: float
    peak_rss: int
    counters: dict[str, int]
    done_at: list[tuple[float, int]] = field(default_factory=list)  # (s since start, done)


def run_job(command: list[str], metrics_path: Path, log_path: Path) -> JobRun:
    """Run ``ib-ingest``; its stderr goes to ``log_path`` and progress is timed as it arrives."""
    started = time.perf_counter()
    done_at: list[tuple[float, int]] = []
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            [*command, "--metrics-json", str(metrics_path)],
            stdout=log,
            stderr=subprocess.PIPE,
            text=True,
        )
        peak = TreePeak(process.pid)
        assert process.stderr is not None
        for line in process.stderr:
            log.write(line)
            log.flush()
            match = _PROGRESS.search(line)
            if match:
                done = int(match[2]) + int(match[1] or 0) + int(match[3])  # all outcomes
                done_at.append((time.perf_counter() - started, done))
        process.stderr.close()
        code = process.wait()
        elapsed = time.perf_counter() - started
        peak_bytes = peak.stop()
    if code != 0:
        raise RuntimeError(f"ib-ingest exited with status {code}; its log: {log_path}")
    counters = json.loads(metrics_path.read_text())["counters"]
    # The last progress line comes up to a second before the end: close with the totals.
    outcomes = ("written", "unchanged", "failed", "read_failed")
    done_at.append((elapsed, sum(counters.get(name, 0) for name in outcomes)))
    return JobRun(elapsed, peak_bytes, counters, done_at)


def ingest_command(
    root: Path,
    collection: str,
    endpoints: Endpoints,
    model: ModelOptions,
    dead_letter: Path,
    extra: list[str],
) -> list[str]:
    """The ``ib-ingest`` command line of a benchmark job: media by URI, progress every second."""
    return [
        sys.executable, "-m", "pipelines.ingest",
        "--input", str(root), "--collection", collection,
        "--weaviate-url", endpoints.weaviate_http,
        "--grpc-port", str(endpoints.weaviate_grpc_port),
        "--store-uri", "--progress-seconds", "1",
        "--dead-letter", str(dead_letter), *as_flags(model), *extra,
    ]  # fmt: skip
