"""Ingestion into one Weaviate node against a cluster of N, in the same run.

    python -m benchmarks.ingest_cluster [--nodes 3] [--objects 400] [--modality image]

The same synthetic objects go into one node and into N nodes at replication
factor N. Each stack is started fresh (its start-up timed, as ``ib-stack
--nodes`` would start it), the job writes through every node, and the
collection is counted at consistency ALL. Prints start-up seconds and ingest
objects/s for both, and the cluster's rate divided by one node's.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

from ib_vectorizer.options import ModelOptions, add_flags, as_flags, from_sources
from pipelines.stack import LocalStack

from .ingest_vs_naive import make_dataset
from .logs import console_logging


def main(argv: list[str] | None = None) -> int:
    console_logging()
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.ingest_cluster", description=__doc__
    )
    parser.add_argument("--nodes", type=int, default=3, help="Weaviate nodes of the cluster")
    parser.add_argument("--objects", type=int, default=400)
    parser.add_argument("--modality", choices=("image", "audio"), default="image")
    add_flags(parser.add_argument_group("model"), ModelOptions)
    args, beam_args = parser.parse_known_args(argv)
    if args.nodes < 2:
        print("error: --nodes must be 2 or more", file=sys.stderr)
        return 1

    from ib_vectorizer.bench.report import cpu_model
    from pipelines.connection import with_consistency
    from pipelines.ingest.command import main as ingest

    model = from_sources(ModelOptions, args)
    rows = []
    with tempfile.TemporaryDirectory(prefix="ib-ingest-cluster-") as tmp:
        root = Path(tmp) / "data"
        make_dataset(root, args.objects, args.modality)
        for nodes in (1, args.nodes):
            started = time.perf_counter()
            with LocalStack(Path(tmp) / f"stack{nodes}", model, nodes=nodes) as stack:
                start_s = time.perf_counter() - started
                urls = ",".join(n.http for n in stack.endpoints.nodes)
                ports = ",".join(str(n.grpc_port) for n in stack.endpoints.nodes)
                job = ["--input", str(root), "--collection", "Bench"]
                job += ["--weaviate-url", urls, "--grpc-port", ports]
                job += ["--replication-factor", str(nodes), *as_flags(model)]
                job += ["--dead-letter", str(Path(tmp) / f"failures{nodes}.jsonl"), *beam_args]
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


if __name__ == "__main__":
    sys.exit(main())
