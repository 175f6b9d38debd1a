"""The scale benchmark: a mixed dataset of N files through ``ib-ingest``, then an unchanged re-run.

    python -m pipelines.ingest.bench --scale 100000 [--dataset DIR] [--data-dir D]

Writes the dataset of :mod:`.scale_dataset` (or reuses ``--dataset``), starts
the local stack, runs the real ``ib-ingest`` command in a subprocess (media
stored by URI: 100,000 photos as BLOBs would double the disk the dataset
takes) and reports:

* objects/s overall, and per modality the decode and embed milliseconds per
  object the job measured, as objects/s per core;
* peak RSS of the job (its whole process tree), of Weaviate and of the
  inference server;
* throughput of the first and the last 10% of the objects, timed from the
  first object written (a job that slows down as the collection grows shows
  it here);
* that the dead letters are the corrupt files exactly and the collection holds
  every other object exactly once;
* the wall time of a re-run on the unchanged tree.

Exit status 1 when a check fails.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from ib_vectorizer.options import ModelOptions, as_flags

from .scale_dataset import MIX, DatasetPlan

_PROGRESS = re.compile(
    r"progress: read \d+, (?:unchanged (\d+), )?embedded \d+, written (\d+), failed (\d+)"
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


def tenths(done_at: list[tuple[float, int]], total: int) -> list[float]:
    """Objects/s over each tenth of ``total`` in turn, from the progress samples.

    Each tenth runs from the first sample at or past its start to the first at
    or past its end, and counts what was done between them; the first starts at
    the first sample with anything done, so start-up is not counted.
    """
    marks = [next((s for s in done_at if s[1] > 0), None)]
    marks += [next((s for s in done_at if s[1] >= total * k / 10), None) for k in range(1, 11)]
    rates = []
    for start, end in itertools.pairwise(marks):
        if start is None or end is None or end[0] <= start[0]:
            return rates
        rates.append((end[1] - start[1]) / (end[0] - start[0]))
    return rates


# -- the benchmark -------------------------------------------------------------------------------


def ingest_command(
    root: Path, collection: str, endpoints, model: ModelOptions, dead_letter: Path, extra: list
) -> list[str]:
    return [
        sys.executable, "-m", "pipelines.ingest",
        "--input", str(root), "--collection", collection,
        "--weaviate-url", endpoints.weaviate_http,
        "--grpc-port", str(endpoints.weaviate_grpc_port),
        "--store-uri", "--progress-seconds", "1",
        "--dead-letter", str(dead_letter), *as_flags(model), *extra,
    ]  # fmt: skip


def dead_letter_ids(path: Path) -> list[str]:
    if not path.exists():
        return []
    return [json.loads(line)["id"] for line in path.read_text().splitlines() if line.strip()]


def run_scale(
    plan: DatasetPlan, root: Path, work: Path, model: ModelOptions, stack, extra: list[str]
) -> int:
    """Both runs against ``stack``; prints the report and returns the exit status."""
    collection = f"Scale{plan.objects}T{int(time.time())}"
    dead_letter = work / "failures.jsonl"
    command = ingest_command(root, collection, stack.endpoints, model, dead_letter, extra)
    first = run_job(command, work / "first.json", work / "first.log")
    rerun_dead = work / "rerun-failures.jsonl"
    rerun_command = ingest_command(root, collection, stack.endpoints, model, rerun_dead, extra)
    rerun = run_job(rerun_command, work / "rerun.json", work / "rerun.log")
    pids = stack.pids()
    server_peaks = {name: peak_rss(pid) for name, pid in pids.items()}
    with stack.client() as client:
        stored = client.collections.get(collection).aggregate.over_all(total_count=True)
    checks = {
        "dead letters are the corrupt files exactly": sorted(dead_letter_ids(dead_letter))
        == sorted(plan.corrupt),
        f"collection holds {plan.valid} objects": stored.total_count == plan.valid,
        "re-run wrote nothing": rerun.counters.get("written", 0) == 0,
        f"re-run found {plan.valid} unchanged": rerun.counters.get("unchanged", 0) == plan.valid,
    }
    print(report(plan, first, rerun, server_peaks, checks, stored.total_count))
    return 0 if all(checks.values()) else 1


def _mib(value: int) -> str:
    return f"{value / 2**20:,.0f} MiB"


def report(plan, first: JobRun, rerun: JobRun, server_peaks, checks, stored: int) -> str:
    from ib_vectorizer.bench.report import cpu_model

    c = first.counters
    lines = [
        f"machine: {cpu_model()}, {os.cpu_count()} cores; {plan.objects:,} files, "
        f"{plan.bytes_on_disk / 1e9:.1f} GB, {len(plan.corrupt)} corrupt",
        "",
        "| | value |",
        "|---|---|",
        f"| first run | {first.elapsed_s:,.0f} s, "
        f"{c.get('written', 0) / first.elapsed_s:.1f} objects/s written |",
    ]
    rates = tenths(first.done_at, plan.objects)
    if len(rates) == 10:
        lines.append(
            f"| first 10% / last 10% | {rates[0]:.1f} / {rates[-1]:.1f} objects/s "
            f"(last/first {rates[-1] / rates[0]:.2f}) |"
        )
        lines.append(f"| each tenth, objects/s | {' · '.join(f'{r:.1f}' for r in rates)} |")
    lines += [
        f"| peak RSS: ib-ingest (process tree) | {_mib(first.peak_rss)} |",
        *(f"| peak RSS: {name} | {_mib(value)} |" for name, value in server_peaks.items()),
        f"| dead letters / corrupt files | {c.get('failed', 0) + c.get('read_failed', 0)}"
        f" / {len(plan.corrupt)} |",
        f"| objects in the collection / expected | {stored:,} / {plan.valid:,} |",
        f"| re-run of the unchanged tree | {rerun.elapsed_s:,.0f} s = "
        f"{100 * rerun.elapsed_s / first.elapsed_s:.1f}% of the first run |",
        "",
        "| modality | objects | decode ms/object | embed ms/object | objects/s per core |",
        "|---|---|---|---|---|",
    ]
    for label in MIX:
        count = plan.counts.get(label, 0)
        if not count:
            continue
        decode = c.get(f"decode_ms_{label}", 0) / count
        embed = c.get(f"embed_ms_{label}", 0) / count
        per_core = 1000 / (decode + embed) if decode + embed > 0 else float("inf")
        lines.append(f"| {label} | {count:,} | {decode:.1f} | {embed:.1f} | {per_core:,.0f} |")
    lines.append("")
    lines += [f"{'ok ' if ok else 'FAILED'} {what}" for what, ok in checks.items()]
    return "\n".join(lines)


def run_long_audio(work: Path, minutes: list[float], model: ModelOptions, stack) -> int:
    """Ingest one recording of each length in segments; print the job's peak RSS for each.

    Streaming decode keeps the job's memory flat: the longest file should
    cost what the shortest does, far below its decoded size.
    """
    from .scale_dataset import write_long_recording

    rows = []
    for length in minutes:
        root = work / f"long-{length:g}min"
        (root / "audio").mkdir(parents=True, exist_ok=True)
        write_long_recording(root / "audio" / "recording.wav", length)
        command = ingest_command(
            root, f"Long{int(length)}M{int(time.time())}", stack.endpoints, model,
            work / f"long-{length:g}.jsonl", ["--segment-seconds", "10"],
        )  # fmt: skip
        run = run_job(command, work / f"long-{length:g}.json", work / f"long-{length:g}.log")
        decoded = length * 60 * 48_000 * 2 * 4  # float32 samples, were it decoded whole
        rows.append((length, run.counters.get("segments", 0), run.elapsed_s, run.peak_rss, decoded))
    print("| recording (48 kHz stereo WAV) | segments of 10 s | job wall time | "
          "job peak RSS | decoded whole would be |")  # fmt: skip
    print("|---|---|---|---|---|")
    for length, segments, elapsed, peak, decoded in rows:
        print(f"| {length:g} min | {segments} | {elapsed:.0f} s | {_mib(peak)} | {_mib(decoded)} |")
    growth = rows[-1][3] - rows[0][3]
    print(f"peak RSS growth from {rows[0][0]:g} to {rows[-1][0]:g} min: {_mib(growth)}")
    return 0
