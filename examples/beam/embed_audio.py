"""Embed every audio file under a path or bucket with ImageBind: RunInference, nothing else.

    python examples/beam/embed_audio.py --input 'gs://my-bucket/sounds/**.wav' \
        --output vectors.jsonl [--checkpoint PATH] [Beam options: --runner ...]

Writes one JSON line per file (``{"path": ..., "vector": [...]}``) and one
per file that could not be embedded (``{"item": ..., "error": ...}``) to
``<output>.failures``. One unusable file fails alone.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

import apache_beam as beam
from apache_beam.io import fileio
from apache_beam.ml.inference.base import RunInference
from apache_beam.options.pipeline_options import PipelineOptions

from pipelines.beam import ImageBindModelHandler


def as_json(result) -> str:
    return json.dumps({"path": result.example, "vector": result.inference.tolist()})


def failure_as_json(failed) -> str:
    item, (_, error, _) = failed  # Beam's dead letter: (element, (type, repr, traceback))
    return json.dumps({"item": item, "error": error})


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input", required=True, help="a file pattern: a path, gs://, s3://")
    parser.add_argument("--output", required=True, help="JSONL of vectors (one file)")
    parser.add_argument("--model", default="imagebind_huge")
    parser.add_argument("--checkpoint")
    args, beam_args = parser.parse_known_args(argv)

    handler = ImageBindModelHandler("audio", model=args.model, checkpoint=args.checkpoint)
    with beam.Pipeline(options=PipelineOptions(beam_args)) as pipeline:
        paths = (
            pipeline
            | "Match" >> fileio.MatchFiles(args.input)
            | "Paths" >> beam.Map(lambda metadata: metadata.path)
        )
        vectors, failed = paths | "Embed" >> RunInference(handler).with_exception_handling()
        _ = (
            vectors
            | "AsJson" >> beam.Map(as_json)
            | "Write" >> beam.io.WriteToText(args.output, shard_name_template="")
        )
        _ = (
            failed.failed_preprocessing[0]  # the files that could not be read or decoded
            | "FailureAsJson" >> beam.Map(failure_as_json)
            | "WriteFailures"
            >> beam.io.WriteToText(f"{args.output}.failures", shard_name_template="")
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
