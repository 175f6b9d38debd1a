"""What the job has done so far: Beam counters, and a progress line every few seconds.

Every count (``read``, ``skipped``, ``decoded``, ``embedded``, ``written``,
``failed``, ...) goes to a Beam counter, which the runner aggregates and the closing summary
reads, and to this process's running totals, which a
:class:`pipelines.job_progress.ProgressReporter` prints with :func:`progress_line`
while the job runs. With the DirectRunner and Prism the workers run in
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

import apache_beam as beam

from ..beam.counters import Counter
from ..job_progress import Progress, format_seconds

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


def progress_line(progress: Progress) -> str:
    """The job's phase and counts: starting, listing, decoding and embedding, writing.

    Listing (files, manifest rows) ends before decoding starts (a reshuffle lies
    between them), so once anything is decoded the number of objects is known
    and an ETA follows, from the rate over the last half minute.
    """
    p = progress
    failed = p["failed"] + p["read_failed"]
    if not (p["listed"] or p["read"]):
        return f"progress: starting, {format_seconds(p.elapsed_s)}: nothing listed yet"
    if not (p["decoded"] or p["unchanged"] or p["written"] or failed):
        return f"progress: listing the input: {p['listed']} found so far"
    unchanged = f"unchanged {p['unchanged']}, " if p["unchanged"] else ""
    counts = (
        f"read {p['read']}, {unchanged}decoded {p['decoded']}, embedded {p['embedded']}, "
        f"written {p['written']}, failed {failed}"
    )
    if not p["written"]:
        return f"progress: {counts}; decoding and embedding the first batches"
    rate = p.rate("written")
    line = f"progress: {counts}; {rate:.1f} objects/s"
    done = p["written"] + p["failed"] + p["unchanged"] + p["skipped"]
    total = max(p["listed"], p["read"])
    if rate > 0 and total > done and not p["segments"]:
        line += f", ETA {format_seconds((total - done) / rate)}"
    return line
