"""What the job has done so far: Beam counters, and a progress line every few seconds.

Every count (``read``, ``skipped``, ``decoded``, ``embedded``, ``written``,
``failed``, ...) goes to a Beam counter, which the runner aggregates and the closing summary
reads, and to this process's running totals, which a :class:`ProgressReporter`
prints while the job runs. With the DirectRunner and Prism the workers run in
the launching process, so those totals are the job's; on Flink and Spark the
reporter reads the job's counters from the engine instead
(:class:`pipelines.runners.metrics.RunnerMetrics`).

Each decode and embed step also counts, per worker process, the work it did
(namespace ``ib_ingest_workers``, ``<stage> <host>:<pid>``), so a summary can
say how many processes shared each stage.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable

import apache_beam as beam

from ..beam.counters import Counter, process_totals, reset_process_totals

NAMESPACE = "ib_ingest"
WORKERS_NAMESPACE = "ib_ingest_workers"
COUNTERS = (
    "listed", "read", "read_failed", "skipped", "unchanged", "decoded", "segments", "embedded",
    "written", "deleted", "failed",
)  # fmt: skip
SKIPPED_KINDS = "skipped_kinds"  # string set: "why<TAB>kind<TAB>example" (see SkippedKinds)
_KINDS_PER_INSTANCE = 16  # the most kinds one step instance names: the set stays small
_NAMED_PER_REASON = 3  # examples the summary names for each reason

log = logging.getLogger("ib_ingest")


class JobCounter(Counter):
    """A counter of the job's (namespace ``ib_ingest``), with this process's running total."""

    def __init__(self, name: str) -> None:
        super().__init__(NAMESPACE, name)


class SkippedKinds:
    """Which kinds of files were skipped, and why, for the closing summary to name.

    A Beam string set of ``why<TAB>kind<TAB>example`` entries: ``not media``,
    ``.md``, ``README.md``. Each instance (one per step on a worker) records
    the first file of each kind it meets, and at most a few kinds, so the set
    stays small however many files are skipped; a set, unlike a counter, is
    not inflated by a retried bundle. :func:`skipped_note` reads it back.
    """

    def __init__(self) -> None:
        self._seen: set[tuple[str, str]] = set()

    def add(self, why: str, kind: str, example: str) -> None:
        if (why, kind) in self._seen or len(self._seen) >= _KINDS_PER_INSTANCE:
            return
        self._seen.add((why, kind))
        entry = "\t".join(part.replace("\t", " ") for part in (why, kind, example))
        beam.metrics.Metrics.string_set(NAMESPACE, SKIPPED_KINDS).add(entry)


def skipped_note(entries) -> str:
    """``not media: README.md, notes.json; OS files: .DS_Store`` from :class:`SkippedKinds`.

    One example per kind, the first few kinds per reason (``...`` when there
    are more); empty when the runner reported no entries.
    """
    examples: dict[str, dict[str, str]] = {}  # why → kind → example
    for entry in entries or ():
        why, _, rest = entry.partition("\t")
        kind, _, example = rest.partition("\t")
        kinds = examples.setdefault(why, {})
        kinds[kind] = min(kinds.get(kind, example), example)
    parts = []
    for why, kinds in sorted(examples.items(), key=lambda item: item[0].lower()):
        names = sorted(kinds.values(), key=str.lower)
        more = ", ..." if len(names) > _NAMED_PER_REASON else ""
        parts.append(f"{why}: {', '.join(names[:_NAMED_PER_REASON])}{more}")
    return "; ".join(parts)


class StageTime:
    """Milliseconds a stage (``decode``, ``embed``) spends per modality, as Beam counters.

    Counted as ``<stage>_ms_<modality>``; with the objects per modality they
    give what one core does per second for each modality, to size a cluster.
    """

    def __init__(self, stage: str) -> None:
        self.stage = stage

    def add(self, modality_label: str, seconds: float) -> None:
        name = f"{self.stage}_ms_{modality_label}"
        beam.metrics.Metrics.counter(NAMESPACE, name).inc(round(seconds * 1000))
        beam.metrics.Metrics.counter(WORKERS_NAMESPACE, f"{self.stage} {worker_id()}").inc()


def worker_id() -> str:
    """``host:pid`` of the process running this step."""
    return f"{socket.gethostname()}:{os.getpid()}"


def workers_by_stage(counters: dict[str, int]) -> dict[str, dict[str, int]]:
    """``{"decode": {"host:pid": calls, ...}, "embed": {...}}`` from the worker counters."""
    stages: dict[str, dict[str, int]] = {}
    for name, calls in counters.items():
        stage, _, worker = name.partition(" ")
        stages.setdefault(stage, {})[worker] = calls
    return stages


def progress_line(counts: dict[str, int], elapsed_s: float) -> str:
    """``read R, embedded E, written W, failed F; X objects/s[, ETA T]``.

    Listing (files, manifest rows) ends before decoding starts (a reshuffle
    lies between them), so once anything is decoded the number of objects is
    known and an ETA follows.
    """
    failed = counts["failed"] + counts.get("read_failed", 0)
    unchanged = counts.get("unchanged", 0)
    done = counts["written"] + counts["failed"] + unchanged + counts.get("skipped", 0)
    rate = counts["written"] / elapsed_s if elapsed_s > 0 else 0.0
    skipped = f"unchanged {unchanged}, " if unchanged else ""
    line = (
        f"progress: read {counts['read']}, {skipped}embedded {counts['embedded']}, "
        f"written {counts['written']}, failed {failed}; {rate:.1f} objects/s"
    )
    total = max(counts.get("listed", 0), counts["read"])
    if counts["decoded"] and rate > 0 and total > done and not counts.get("segments"):
        line += f", ETA {format_seconds((total - done) / rate)}"
    return line


def format_seconds(seconds: float) -> str:
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


class ProgressReporter:
    """Logs a progress line every ``every_s`` seconds until stopped.

    ``counts`` gives the job's counters now (default: this process's running
    totals in ``namespace``), or None while they are not known; the last known
    are shown then. ``line`` writes the line (default :func:`progress_line`,
    ib-ingest's) from the counters and the seconds since the start; ``logger``
    is the command's.
    """

    def __init__(
        self,
        every_s: float,
        counts: Callable[[], dict[str, int] | None] | None = None,
        *,
        namespace: str = NAMESPACE,
        counters: tuple[str, ...] = COUNTERS,
        line: Callable[[dict[str, int], float], str] = progress_line,
        logger: logging.Logger = log,
    ) -> None:
        self.every_s = every_s
        self.log = logger
        self.namespace = namespace
        self.counters = counters
        self.line = line
        self._counts = counts or self._process_totals
        self._last = dict.fromkeys(counters, 0)
        self.started = time.perf_counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="job-progress", daemon=True)

    def _process_totals(self) -> dict[str, int]:
        counted = process_totals(self.namespace)
        return {name: counted.get(name, 0) for name in self.counters}

    def __enter__(self) -> ProgressReporter:
        reset_process_totals(self.namespace)
        self.started = time.perf_counter()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            counts = self._counts()
            if counts is not None:
                self._last = dict.fromkeys(self.counters, 0) | dict(counts)
            self.log.info(self.line(self._last, time.perf_counter() - self.started))
