"""Enrich a stream of queries with their nearest objects in Weaviate: Beam's ``Enrichment``.

    python examples/beam/enrich_queries.py --queries queries.jsonl --collection Media \
        --output neighbours.jsonl --weaviate-url http://localhost:8080 [--checkpoint PATH] \
        [Beam options: --streaming, --runner ...]

A query is a JSON line: ``{"id": "q1", "text": "a dog barking"}`` (Weaviate
embeds the text with the collection's vectorizer) or ``{"id": "q2", "image":
"photos/cat.jpg"}`` (embedded here with ImageBind, then searched by vector).
In production the lines come from a stream (``ReadFromPubSub`` with
``--streaming``); the steps after the source are the same.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

import apache_beam as beam
from apache_beam.ml.inference.base import RunInference
from apache_beam.ml.rag.types import Chunk, Content, Embedding
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.transforms.enrichment import Enrichment

from pipelines.beam import ImageBindModelHandler, WeaviateSearchEnrichmentHandler


def text_query(query: dict) -> Chunk:
    return Chunk(id=query["id"], content=Content(text=query["text"]))


def vector_query(keyed) -> Chunk:
    query_id, result = keyed
    vector = Embedding(dense_embedding=result.inference.tolist())
    return Chunk(id=query_id, content=Content(), embedding=vector)


def neighbours(chunk: Chunk) -> str:
    found = chunk.metadata["enrichment_data"]
    return json.dumps({"id": chunk.id, "neighbours": found["id"], "distances": found["distance"]})


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", required=True, help="JSONL of queries")
    parser.add_argument("--collection", required=True)
    parser.add_argument("--output", required=True, help="JSONL of neighbours per query")
    parser.add_argument("--limit", type=int, default=5)
    parser.add_argument("--weaviate-url", default="http://localhost:8080")
    parser.add_argument("--grpc-port", type=int, default=50051)
    parser.add_argument("--model", default="imagebind_huge")
    parser.add_argument("--checkpoint")
    args, beam_args = parser.parse_known_args(argv)

    embed_images = ImageBindModelHandler("image", model=args.model, checkpoint=args.checkpoint)
    search = WeaviateSearchEnrichmentHandler(
        args.collection, url=args.weaviate_url, grpc_port=args.grpc_port, limit=args.limit
    )
    with beam.Pipeline(options=PipelineOptions(beam_args)) as pipeline:
        queries = (
            pipeline
            | "Read" >> beam.io.ReadFromText(args.queries)
            | "Parse" >> beam.Map(json.loads)
        )
        by_text = (
            queries
            | "TextQueries" >> beam.Filter(lambda q: "text" in q)
            | "TextChunks" >> beam.Map(text_query)
        )
        by_image = (
            queries
            | "ImageQueries" >> beam.Filter(lambda q: "image" in q)
            | "Keyed" >> beam.Map(lambda q: (q["id"], q["image"]))
            | "EmbedImages" >> RunInference(embed_images.keyed())
            | "VectorChunks" >> beam.Map(vector_query)
        )
        _ = (
            (by_text, by_image)
            | "All" >> beam.Flatten()
            | "Search" >> Enrichment(search)
            | "AsJson" >> beam.Map(neighbours)
            | "Write" >> beam.io.WriteToText(args.output, shard_name_template="")
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
