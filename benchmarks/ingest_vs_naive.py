"""Ingestion benchmark: the Beam pipeline against a naive loop, in the same run.

    python -m benchmarks.ingest_vs_naive --objects 400 [--modality image] [--data-dir D]

Generates N synthetic objects (deterministic media in a temporary directory),
starts the local stack, then writes them into two fresh collections:

* the pipeline: ``ib-ingest --embed local`` (DirectRunner unless Beam options
  say otherwise), batched decoding, embedding and writes;
* the naive loop: for each object, one ``POST /vectorize`` to the server and one
  ``insert`` into Weaviate, as a hand-written script would.

Prints objects/s for both and the ratio, then the time of a re-run of the
pipeline on the unchanged tree (every object skipped by its content hash).
Both paths are checked to have written every object.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

from ib_vectorizer.options import ModelOptions, add_flags, as_flags, from_sources

from .logs import console_logging


def make_dataset(root: Path, count: int, modality: str, seed: int = 0) -> list[Path]:
    """``count`` files under ``root/<modality>/``: 320x240 JPEGs or 3 s WAVs."""
    from ib_vectorizer.bench.payloads import audio_payload, image_payload

    rng = np.random.default_rng(seed)
    folder = root / modality
    folder.mkdir(parents=True, exist_ok=True)
    if modality not in ("image", "audio"):
        raise ValueError(f"--modality must be image or audio, not {modality!r}")
    paths = []
    for i in range(count):
        if modality == "image":
            path, data = folder / f"{i:06d}.jpg", image_payload(rng, size=(320, 240))
        else:
            path, data = folder / f"{i:06d}.wav", audio_payload(rng, seconds=3.0)
        path.write_bytes(data)
        paths.append(path)
    return paths


def naive_loop(
    paths: list[Path], root: Path, modality: str, vectorizer: str, collection: Any
) -> None:
    """One request and one insert per object, as a hand-written script would do it."""
    from weaviate.util import generate_uuid5

    key, vectors_key = {"image": ("images", "imageVectors"), "audio": ("audio", "audioVectors")}[
        modality
    ]
    for path in paths:
        data = path.read_bytes()
        encoded = base64.b64encode(data).decode()
        request = urllib.request.Request(
            vectorizer + "/vectorize",
            data=json.dumps({key: [encoded]}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=300) as response:
            vector = json.loads(response.read())[vectors_key][0]
        source_id = path.relative_to(root).as_posix()
        properties = {modality: encoded, "source_id": source_id}
        uuid = generate_uuid5(source_id)
        collection.data.insert(properties, uuid=uuid, vector={"imagebind": vector})


def main(argv: list[str] | None = None) -> int:
    console_logging()
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.ingest_vs_naive", description=__doc__
    )
    parser.add_argument("--objects", type=int, default=400)
    parser.add_argument("--modality", choices=("image", "audio"), default="image")
    parser.add_argument("--data-dir", help="local stack data directory (default: a temporary one)")
    parser.add_argument(
        "--no-naive", action="store_true", help="skip the naive loop (for large --objects)"
    )
    add_flags(parser.add_argument_group("model"), ModelOptions)
    args, beam_args = parser.parse_known_args(argv)

    import weaviate

    from ib_vectorizer.bench.report import cpu_model
    from ib_vectorizer.modalities import Modality
    from pipelines.ingest.command import main as ingest
    from pipelines.schema import MediaField, create_bind_collection
    from pipelines.stack import LocalStack

    model = from_sources(ModelOptions, args)
    with tempfile.TemporaryDirectory(prefix="ib-ingest-bench-") as tmp:
        root = Path(tmp) / "data"
        paths = make_dataset(root, args.objects, args.modality)
        stack_dir = args.data_dir or Path(tmp) / "stack"
        with LocalStack(stack_dir, model) as stack:
            e = stack.endpoints
            suffix = str(int(time.time()))
            failures = str(Path(tmp) / "failures.jsonl")
            job = ["--input", str(root), "--collection", f"BenchPipeline{suffix}"]
            job += ["--weaviate-url", e.weaviate_http, "--grpc-port", str(e.weaviate_grpc_port)]
            job += [*as_flags(model), "--dead-letter", failures, *beam_args]
            started = time.perf_counter()
            if ingest(job) != 0:
                return 1
            pipeline_s = time.perf_counter() - started
            started = time.perf_counter()  # the same tree again: every object is unchanged
            if ingest(job) != 0:
                return 1
            rerun_s = time.perf_counter() - started
            naive_s = None
            with weaviate.connect_to_local(
                port=e.weaviate_port, grpc_port=e.weaviate_grpc_port
            ) as c:
                names = [f"BenchPipeline{suffix}"]
                if not args.no_naive:
                    field = MediaField(args.modality, Modality.parse(args.modality))
                    naive = create_bind_collection(c, f"BenchNaive{suffix}", [field])
                    started = time.perf_counter()
                    naive_loop(paths, root, args.modality, e.vectorizer, naive)
                    naive_s = time.perf_counter() - started
                    names.append(f"BenchNaive{suffix}")
                counts = {
                    name: c.collections.get(name).aggregate.over_all(total_count=True).total_count
                    for name in names
                }
    if set(counts.values()) != {args.objects}:
        print(f"error: not every object was written: {counts}", file=sys.stderr)
        return 1
    print(
        f"machine: {cpu_model()}, {os.cpu_count()} cores; model {model.model}; {args.objects} "
        f"{args.modality} objects"
    )
    print(
        f"pipeline (ib-ingest --embed local): {args.objects / pipeline_s:8.1f} objects/s "
        f"({pipeline_s:.1f} s)"
    )
    if naive_s is not None:
        print(
            f"naive loop (1 request + 1 insert):  {args.objects / naive_s:8.1f} objects/s "
            f"({naive_s:.1f} s)"
        )
        print(f"speedup: {naive_s / pipeline_s:.2f}x")
    print(
        f"re-run of the unchanged tree: {rerun_s:.1f} s, "
        f"{100 * rerun_s / pipeline_s:.1f}% of the first run"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
