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
Dataflow, where the workers cannot write to the launcher's disk), else in a
temporary folder on this machine, which local runners and a local cluster
share.
"""

from __future__ import annotations

import json
import logging
import tempfile

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

log = logging.getLogger("ib_ingest")


def tally_path(temp_location: str | None, job_name: str) -> str:
    folder = temp_location or tempfile.mkdtemp(prefix="ib-ingest-")
    return FileSystems.join(folder, f"{job_name}-tally.json")


class CountInto(beam.PTransform):
    """Count each named PCollection; write ``{name: count}`` as one JSON line at ``path``.

    A name given several PCollections counts their sum; a name given a pair
    ``(minuend, subtrahend)`` counts the first minus the second.
    """

    def __init__(self, sources: dict[str, list], path: str) -> None:
        super().__init__()
        self.sources = sources
        self.path = path

    def expand(self, pbegin):
        counted = []
        for name, pcolls in self.sources.items():
            for index, (sign, pcoll) in enumerate(pcolls):
                counted.append(
                    pcoll
                    | f"Count{name}{index}" >> beam.combiners.Count.Globally()
                    | f"Key{name}{index}" >> beam.Map(lambda n, k=name, s=sign: (k, s * n))
                )
        return (
            counted
            | "AllCounts" >> beam.Flatten()
            | "SumPerName" >> beam.CombinePerKey(sum)
            | "AsOne" >> beam.combiners.ToDict()
            | "AsJson" >> beam.Map(json.dumps)
            | "WriteTally" >> beam.io.WriteToText(self.path, num_shards=1, shard_name_template="")
        )


def read_tally(path: str) -> dict[str, int] | None:
    """The counts the job wrote at ``path`` (then removed), or None if it wrote none."""
    try:
        with FileSystems.open(path) as handle:
            counts = json.loads(handle.read().decode() or "{}")
        FileSystems.delete([path])
    except (OSError, ValueError) as err:
        log.info("no exact counts from the job (%s); the summary shows the runner's counters", err)
        return None
    return {name: int(value) for name, value in counts.items()}
