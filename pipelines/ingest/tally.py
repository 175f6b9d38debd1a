"""Exact counts of what a job did, from its PCollections, for the closing summary.

Beam's counters are *attempted* counts on most runners: when an engine runs a
bundle again (Spark recomputing the partitions a lost executor held, Flink
restarting a job), its increments count again — the progress line may show
that, the closing summary must not. PCollections have no such doubt: Beam
keeps only one successful attempt of every bundle's output. So the summary's
main figures (read, unchanged, embedded, written, failed) are counted from the
job's own PCollections, combined into one small JSON file that the launching
process reads when the job is over (:func:`read_tally`).

The file lives under Beam's ``--temp_location`` when one is set (a bucket on
Dataflow), else in a temporary folder on this machine — which only workers
that share this machine's disk can write: in-process runners and the LOOPBACK
and PROCESS environments. Workers in containers (DOCKER, EXTERNAL) without a
``--temp_location`` get no tally; the summary then shows the runner's counters.
"""

from __future__ import annotations

import logging
import tempfile

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

log = logging.getLogger("ib_ingest")


SHARED_DISK_ENVIRONMENTS = ("LOOPBACK", "PROCESS")


def tally_folder(temp_location: str | None, environment_type: str | None) -> str | None:
    """Where the tally can go so that this process reads it; None where nowhere is."""
    if temp_location:
        return temp_location
    if environment_type and environment_type.upper() not in SHARED_DISK_ENVIRONMENTS:
        return None  # each container has its own /tmp
    return tempfile.mkdtemp(prefix="ib-ingest-tally-")


class CountInto(beam.PTransform):
    """Count each named PCollection; write ``name,count`` lines into one file at ``path``.

    A name is given ``(sign, pcollection)`` pairs: its count is the signed sum
    of their sizes (``[(1, all), (-1, skipped)]`` counts the rest). Counted in
    one shuffle, with partial sums per bundle.
    """

    def __init__(self, sources: dict[str, list], path: str) -> None:
        super().__init__()
        self.sources = sources
        self.path = path

    def expand(self, pbegin):
        keyed = [
            pcoll | f"Key{name}{index}" >> beam.Map(lambda _, k=name, s=sign: (k, s))
            for name, pcolls in self.sources.items()
            for index, (sign, pcoll) in enumerate(pcolls)
        ]
        return (
            keyed
            | "AllCounts" >> beam.Flatten()
            | "SumPerName" >> beam.CombinePerKey(sum)
            | "AsLines" >> beam.MapTuple(lambda name, count: f"{name},{count}")
            | "WriteTally" >> beam.io.WriteToText(self.path, num_shards=1, shard_name_template="")
        )


def read_tally(path: str, names) -> dict[str, int] | None:
    """The counts of ``names`` the job wrote at ``path`` (then removed), or None if none."""
    try:
        with FileSystems.open(path) as handle:
            lines = handle.read().decode().splitlines()
        FileSystems.delete([path])
    except OSError as err:
        log.info("no exact counts from the job (%s); the summary shows the runner's counters", err)
        return None
    counts = dict.fromkeys(names, 0)  # a name with nothing to count wrote no line
    for line in lines:
        name, _, value = line.rpartition(",")
        counts[name] = int(value)
    return counts
