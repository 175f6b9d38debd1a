"""RAG ingestion of text and photos into Weaviate with Beam's own RAG transforms.

    python examples/beam/rag_ingest.py --texts notes.txt --photos 'photos/*.jpg' \
        --collection Notes --weaviate-url http://localhost:8080 [--grpc-port 50051] \
        [--checkpoint PATH] [Beam options]

Each line of ``--texts`` is a chunk of text; each photo is a chunk whose
content is its path. ``MLTransform`` embeds both with ImageBind (one
embedding space, so a text query finds photos), and
``VectorDatabaseWriteTransform(WeaviateWriteConfig(...))`` writes them: the
chunk's id becomes the object's uuid, so running it again replaces them.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections.abc import Sequence

import apache_beam as beam
from apache_beam.io import fileio
from apache_beam.ml.rag.ingestion.base import VectorDatabaseWriteTransform
from apache_beam.ml.rag.types import Chunk, Content
from apache_beam.ml.transforms.base import MLTransform
from apache_beam.options.pipeline_options import PipelineOptions

from pipelines.beam import ImageBindEmbeddings, WeaviateWriteConfig


def text_chunk(line: str) -> Chunk:
    return Chunk(id=f"text:{line}", content=Content(text=line), metadata={"modality": "text"})


def photo_chunk(path: str) -> Chunk:
    return Chunk(id=f"photo:{path}", content=Content(text=path), metadata={"modality": "image"})


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--texts", required=True, help="a text file: one chunk per line")
    parser.add_argument("--photos", required=True, help="a file pattern of photos")
    parser.add_argument("--collection", required=True)
    parser.add_argument("--weaviate-url", default="http://localhost:8080")
    parser.add_argument("--grpc-port", type=int, default=50051)
    parser.add_argument("--failures", default="rag-failures.jsonl")
    parser.add_argument("--model", default="imagebind_huge")
    parser.add_argument("--checkpoint")
    args, beam_args = parser.parse_known_args(argv)

    model = {"model": args.model, "checkpoint": args.checkpoint}
    artifacts = tempfile.mkdtemp(prefix="mltransform-")  # MLTransform keeps its config here
    with beam.Pipeline(options=PipelineOptions(beam_args)) as pipeline:
        texts = (
            pipeline
            | "ReadTexts" >> beam.io.ReadFromText(args.texts)
            | "TextChunks" >> beam.Map(text_chunk)
            | "EmbedTexts"
            >> MLTransform(write_artifact_location=f"{artifacts}/text").with_transform(
                ImageBindEmbeddings("text", **model)
            )
        )
        photos = (
            pipeline
            | "MatchPhotos" >> fileio.MatchFiles(args.photos)
            | "PhotoChunks" >> beam.Map(lambda metadata: photo_chunk(metadata.path))
            | "EmbedPhotos"
            >> MLTransform(write_artifact_location=f"{artifacts}/image").with_transform(
                ImageBindEmbeddings("image", **model)
            )
        )
        config = WeaviateWriteConfig(
            args.collection, url=args.weaviate_url, grpc_port=args.grpc_port
        )
        failures = (
            (texts, photos)
            | "All" >> beam.Flatten()
            | "Write" >> VectorDatabaseWriteTransform(config)
        )
        _ = (
            failures
            | "AsJson" >> beam.Map(lambda failure: json.dumps(failure.as_dict()))
            | "WriteFailures" >> beam.io.WriteToText(args.failures, shard_name_template="")
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
