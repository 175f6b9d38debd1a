"""Dead letters: what failed, where, and why, as one flat record per item."""

from __future__ import annotations

import json
from dataclasses import dataclass

import apache_beam as beam

# The tag of a step's output of Failures (``with_outputs(FAILURES, main=...)``).
FAILURES = "failures"


@dataclass(frozen=True)
class Failure:
    """An item that could not be processed: its id, where it came from, the stage that
    failed (``read``, ``decode``, ``embed``, ``write``, ...) and the reason, in one line."""

    id: str
    source: str
    stage: str
    error: str

    def as_dict(self) -> dict[str, str]:
        return {"id": self.id, "source": self.source, "stage": self.stage, "error": self.error}


def write_failures(failures, path: str):
    """Write a PCollection of Failures to one file: Parquet for ``.parquet``/``.pq``, else JSONL."""
    rows = failures | "AsDicts" >> beam.Map(Failure.as_dict)
    if path.endswith((".parquet", ".pq")):
        import pyarrow as pa

        schema = pa.schema([(k, pa.string()) for k in ("id", "source", "stage", "error")])
        return rows | "DeadLetters" >> beam.io.WriteToParquet(
            path, schema, num_shards=1, shard_name_template=""
        )
    return (
        rows
        | "AsJson" >> beam.Map(json.dumps)
        | "DeadLetters" >> beam.io.WriteToText(path, num_shards=1, shard_name_template="")
    )
