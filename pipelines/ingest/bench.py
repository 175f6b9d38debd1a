"""Ingestion benchmark: the Beam pipeline against a naive loop, in the same run.

    python -m pipelines.ingest.bench --objects 400 [--modality image] [--data-dir D]
    python -m pipelines.ingest.bench --scale 100000 [--dataset DIR]   (see scale_bench)
    python -m pipelines.ingest.bench --long-audio 10 120   (segmented, peak RSS per length)
    python -m pipelines.ingest.bench --cluster 3 --objects 400   (one node vs a cluster)

Generates N synthetic objects (deterministic media in a temporary directory),
starts the local stack (or uses ``--weaviate-url``/``--vectorizer-url``), then
writes them into two fresh collections:

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
import logging
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

from ib_vectorizer.options import ModelOptions, add_flags, as_flags, from_sources

log = logging.getLogger("ib_ingest.bench")


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


def naive_loop(paths: list[Path], root: Path, modality: str, vectorizer: str, collection) -> None:
    """One request and one insert per object."""
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
    from ..command import console_logging

    console_logging()
    parser = argparse.ArgumentParser(prog="python -m pipelines.ingest.bench", description=__doc__)
    parser.add_argument("--objects", type=int, default=400)
    parser.add_argument("--modality", choices=("image", "audio"), default="image")
    parser.add_argument("--data-dir", help="local stack data directory (default: a temporary one)")
    parser.add_argument(
        "--no-naive", action="store_true", help="skip the naive loop (for large --objects)"
    )
    parser.add_argument(
        "--scale",
        type=int,
        metavar="N",
        help="instead: the scale benchmark on a mixed dataset of N files (see scale_bench)",
    )
    parser.add_argument(
        "--dataset", help="with --scale: where the dataset is written, or reused (default: temp)"
    )
    parser.add_argument(
        "--long-audio",
        type=float,
        nargs="+",
        metavar="MINUTES",
        help="instead: ingest one recording of each length in 10 s segments, print peak RSS",
    )
    parser.add_argument(
        "--cluster",
        type=int,
        metavar="N",
        help="instead: stack start-up and ib-ingest objects/s, one node against N nodes "
        "with replication factor N",
    )
    add_flags(parser.add_argument_group("model"), ModelOptions)
    args, beam_args = parser.parse_known_args(argv)

    import os

    import weaviate

    from ib_vectorizer.bench.report import cpu_model
    from ib_vectorizer.modalities import Modality

    from ..schema import MediaField, create_bind_collection
    from ..stack import LocalStack
    from .command import main as ingest

    model = from_sources(ModelOptions, args)
    if args.scale is not None:
        return scale(args, model, beam_args)
    if args.long_audio:
        return long_audio(args, model)
    if args.cluster is not None:
        return cluster(args, model, beam_args)
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
    cpu = cpu_model()
    print(
        f"machine: {cpu}, {os.cpu_count()} cores; model {model.model}; {args.objects} "
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


def scale(args, model: ModelOptions, extra: list[str]) -> int:
    """``--scale N``: the mixed dataset through the real command, then the unchanged re-run."""
    from ..stack import LocalStack
    from .scale_bench import run_scale
    from .scale_dataset import write_dataset

    if args.scale < 1:
        print("error: --scale must be at least 1", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory(prefix="ib-ingest-scale-") as tmp:
        root = Path(args.dataset) if args.dataset else Path(tmp) / "data"
        plan = write_dataset(root, args.scale)
        work = root.with_name(root.name + "-runs") if args.dataset else Path(tmp)
        work.mkdir(exist_ok=True)  # the jobs' logs, metrics and dead letters
        log.info("job logs in %s", work)
        with LocalStack(args.data_dir or work / "stack", model) as stack:
            return run_scale(plan, root, work, model, stack, extra)


def cluster(args, model: ModelOptions, extra: list[str]) -> int:
    """``--cluster N``: the same ingest into one node and into N nodes at replication factor N.

    Each stack is started fresh (its start-up timed, as ``ib-stack --nodes``
    would start it), the job writes through every node, and the collection
    is counted at consistency ALL.
    """
    import os

    from ib_vectorizer.bench.report import cpu_model

    from ..connection import with_consistency
    from ..stack import LocalStack
    from .command import main as ingest

    if args.cluster < 2:
        print("error: --cluster must be 2 or more", file=sys.stderr)
        return 1
    rows = []
    with tempfile.TemporaryDirectory(prefix="ib-ingest-cluster-") as tmp:
        root = Path(tmp) / "data"
        make_dataset(root, args.objects, args.modality)
        for nodes in (1, args.cluster):
            started = time.perf_counter()
            with LocalStack(Path(tmp) / f"stack{nodes}", model, nodes=nodes) as stack:
                start_s = time.perf_counter() - started
                urls = ",".join(n.http for n in stack.endpoints.nodes)
                ports = ",".join(str(n.grpc_port) for n in stack.endpoints.nodes)
                job = ["--input", str(root), "--collection", "Bench"]
                job += ["--weaviate-url", urls, "--grpc-port", ports]
                job += ["--replication-factor", str(nodes), *as_flags(model)]
                job += ["--dead-letter", str(Path(tmp) / f"failures{nodes}.jsonl"), *extra]
                started = time.perf_counter()
                if ingest(job) != 0:
                    return 1
                ingest_s = time.perf_counter() - started
                with stack.client() as client:
                    at_all = with_consistency(client.collections.get("Bench"), "ALL")
                    found = len(at_all.query.fetch_objects(limit=args.objects + 1).objects)
            if found != args.objects:
                print(
                    f"error: {found} of {args.objects} objects at {nodes} node(s)", file=sys.stderr
                )
                return 1
            rows.append((nodes, start_s, args.objects / ingest_s))
    print(
        f"machine: {cpu_model()}, {os.cpu_count()} cores; model {model.model}; "
        f"{args.objects} {args.modality} objects, written through every node, counted at ALL"
    )
    print(
        "| Weaviate nodes | replication factor | stack start-up s | ingest objects/s | ÷ one node |"
    )
    print("|---:|---:|---:|---:|---:|")
    for nodes, start_s, rate in rows:
        print(f"| {nodes} | {nodes} | {start_s:.1f} | {rate:.1f} | {rate / rows[0][2]:.2f}× |")
    return 0


def long_audio(args, model: ModelOptions) -> int:
    """``--long-audio 10 120``: memory of segmented ingestion against the recording's length."""
    from ..stack import LocalStack
    from .scale_bench import run_long_audio

    with tempfile.TemporaryDirectory(prefix="ib-ingest-long-") as tmp:
        stack = LocalStack(args.data_dir or Path(tmp) / "stack", model)
        with stack:
            return run_long_audio(Path(tmp), sorted(args.long_audio), model, stack)


if __name__ == "__main__":
    sys.exit(main())
