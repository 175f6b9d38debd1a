"""Re-tagging against ingesting: the same collection, in the same run.

    python -m benchmarks.retag_vs_ingest --objects 1000 [--image-size 1600x1200] [model flags]

Generates N synthetic photos, starts the local stack, ingests them with
``ib-ingest --labels`` (read, decode, embed, tag, write), then gives the
whole collection a new label set with ``ib-tag`` (stored vectors only).
Prints both times and their ratio, and the proof that the re-tag read and
embedded no media: ib-tag's counters, the inference server's embedded-items
counter before and after it, and every stored vector unchanged.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ib_vectorizer.options import ModelOptions, add_flags, as_flags, from_sources

from .logs import console_logging

if TYPE_CHECKING:
    from weaviate import WeaviateClient

    from pipelines.stack import Endpoints

# Everyday things, as a user's label file would list them; the second set re-tags.
FIRST_LABELS = (
    "dog", "cat", "car", "bicycle", "tree", "flower", "beach", "mountain", "city street",
    "kitchen", "birthday cake", "sunset", "snow", "forest", "river", "bridge", "train",
    "airplane", "boat", "horse", "bird", "pizza", "coffee cup", "laptop", "book", "guitar",
    "concert", "football match", "wedding", "baby", "portrait", "group photo", "document",
    "screenshot", "receipt", "whiteboard", "night sky", "fireworks", "garden", "living room",
)  # fmt: skip
SECOND_LABELS = (
    "indoors", "outdoors", "daytime", "night", "people", "animal", "food", "vehicle",
    "landscape", "text", "close-up", "crowd", "water", "sky", "building", "plant",
)  # fmt: skip


def embedded_items(vectorizer: str) -> float:
    """The inference server's count of items it has embedded (every modality)."""
    with urllib.request.urlopen(vectorizer.rstrip("/") + "/metrics", timeout=30) as response:
        text = response.read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("ib_items_embedded_total")
    )


def stored_vectors(client: WeaviateClient, collection: str) -> dict[str, np.ndarray]:
    objects = client.collections.get(collection).iterator(include_vector=True)
    return {str(o.uuid): np.asarray(o.vector["imagebind"]) for o in objects}


def measure(
    endpoints: Endpoints, model: ModelOptions, work: Path, objects: int, image_size: tuple[int, int]
) -> dict[str, Any]:
    """Ingest ``objects`` photos with tags, then re-tag them; the times and the proof."""
    import weaviate

    from pipelines.ingest.command import main as ingest
    from pipelines.tag.command import main as tag

    tree = work / "photos"
    _write_photos(tree / "image", objects, image_size)
    first, second = work / "first.txt", work / "second.txt"
    first.write_text("\n".join(FIRST_LABELS) + "\n")
    second.write_text("\n".join(SECOND_LABELS) + "\n")
    collection = f"Retag{int(time.time())}{os.getpid()}"
    where = ["--weaviate-url", endpoints.weaviate_http]
    where += ["--grpc-port", str(endpoints.weaviate_grpc_port), *as_flags(model)]
    ingest_metrics, tag_metrics = work / "ingest.json", work / "tag.json"
    started = time.perf_counter()
    status = ingest(
        ["--input", str(tree), "--collection", collection, "--labels", str(first),
         "--vectorizer-url", endpoints.vectorizer, "--dead-letter", str(work / "ingest.jsonl"),
         "--metrics-json", str(ingest_metrics), *where]
    )  # fmt: skip
    ingest_s = time.perf_counter() - started
    if status != 0:
        raise RuntimeError("ib-ingest failed")
    with weaviate.connect_to_local(
        port=endpoints.weaviate_port, grpc_port=endpoints.weaviate_grpc_port
    ) as client:
        before = stored_vectors(client, collection)
        embedded_before = embedded_items(endpoints.vectorizer)
        started = time.perf_counter()
        status = tag(
            ["--collection", collection, "--labels", str(second), "--top-k", "3",
             "--dead-letter", str(work / "tag.jsonl"), "--metrics-json", str(tag_metrics),
             *where]
        )  # fmt: skip
        tag_s = time.perf_counter() - started
        if status != 0:
            raise RuntimeError("ib-tag failed")
        embedded_after = embedded_items(endpoints.vectorizer)
        after = stored_vectors(client, collection)
    unchanged = before.keys() == after.keys() and all(
        np.array_equal(before[k], after[k]) for k in before
    )
    return {
        "collection": collection,
        "objects": objects,
        "image_size": list(image_size),
        "ingest_s": round(ingest_s, 2),
        "tag_s": round(tag_s, 2),
        "ingest": json.loads(ingest_metrics.read_text())["counters"],
        "tag": json.loads(tag_metrics.read_text())["counters"],
        "server_items_embedded_during_tag": embedded_after - embedded_before,
        "vectors_unchanged": unchanged,
    }


def _write_photos(folder: Path, count: int, size: tuple[int, int]) -> None:
    from ib_vectorizer.bench.payloads import image_payload

    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        (folder / f"{i:06d}.jpg").write_bytes(image_payload(rng, size=size))


def main(argv: list[str] | None = None) -> int:
    from ib_vectorizer.bench.report import cpu_model
    from pipelines.stack import LocalStack

    console_logging()
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.retag_vs_ingest", description=__doc__
    )
    parser.add_argument("--objects", type=int, default=1000)
    parser.add_argument("--image-size", default="1600x1200", help="WxH of each photo")
    parser.add_argument("--json", help="write the figures to this file too")
    add_flags(parser.add_argument_group("model"), ModelOptions)
    args = parser.parse_args(argv)
    width, _, height = args.image_size.partition("x")
    size = (int(width), int(height))
    model = from_sources(ModelOptions, args)
    with tempfile.TemporaryDirectory(prefix="ib-tag-bench-") as tmp:
        work = Path(tmp)
        with LocalStack(work / "stack", model) as stack:
            figures = measure(stack.endpoints, model, work, args.objects, size)
    figures["machine"] = f"{cpu_model()}, {os.cpu_count()} cores"
    figures["model"] = model.model
    print(
        f"machine: {figures['machine']}; model {model.model}; {args.objects} photos of "
        f"{args.image_size}"
    )
    print(f"ib-ingest --labels: {figures['ingest_s']:.1f} s")
    print(f"ib-tag (new labels): {figures['tag_s']:.1f} s")
    print(f"re-tag / ingest: {figures['tag_s'] / figures['ingest_s']:.3f}")
    print(
        f"ib-tag counters: {figures['tag']}; items the server embedded meanwhile: "
        f"{figures['server_items_embedded_during_tag']:.0f}; vectors unchanged: "
        f"{figures['vectors_unchanged']}"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
