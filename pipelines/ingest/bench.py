"""Ingestion benchmark: the Beam pipeline against a naive loop, in the same run.

    python -m pipelines.ingest.bench --objects 400 [--modality image] [--data-dir D]

Generates N synthetic objects (deterministic media in a temporary directory),
starts the local stack (or uses ``--weaviate-url``/``--vectorizer-url``), then
writes them into two fresh collections:

* the pipeline: ``ib-ingest --embed local`` (DirectRunner unless Beam options
  say otherwise), batched decoding, embedding and writes;
* the naive loop: for each object, one ``POST /vectorize`` to the server and one
  ``insert`` into Weaviate, as a hand-written script would.

Prints objects/s for both and the ratio. Both paths are checked to have
written every object.
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

log = logging.getLogger("ib_ingest.bench")


def make_dataset(root: Path, count: int, modality: str, seed: int = 0) -> list[Path]:
    """``count`` files under ``root/<modality>/``: 320x240 JPEGs or 3 s WAVs."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    folder = root / modality
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        if modality == "image":
            y, x = np.mgrid[0:240, 0:320]
            base = np.stack([x * 255 / 319, y * 255 / 239, np.full_like(x, i % 256)], -1)
            pixels = np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)
            path = folder / f"{i:06d}.jpg"
            Image.fromarray(pixels, "RGB").save(path, "JPEG", quality=85)
        elif modality == "audio":
            import wave

            t = np.arange(3 * 16000) / 16000
            tone = 0.3 * np.sin(2 * np.pi * (200 + 10 * i) * t) + rng.normal(0, 0.01, t.size)
            path = folder / f"{i:06d}.wav"
            with wave.open(str(path), "wb") as out:
                out.setnchannels(1)
                out.setsampwidth(2)
                out.setframerate(16000)
                out.writeframes((tone * 32767).astype("<i2").tobytes())
        else:
            raise ValueError(f"--modality must be image or audio, not {modality!r}")
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
            vectorizer + "/vectorize", data=json.dumps({key: [encoded]}).encode(),
            headers={"Content-Type": "application/json"},
        )  # fmt: skip
        with urllib.request.urlopen(request, timeout=300) as response:
            vector = json.loads(response.read())[vectors_key][0]
        source_id = path.relative_to(root).as_posix()
        properties = {modality: encoded, "source_id": source_id}
        uuid = generate_uuid5(source_id)
        collection.data.insert(properties, uuid=uuid, vector={"imagebind": vector})


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    parser = argparse.ArgumentParser(prog="python -m pipelines.ingest.bench", description=__doc__)
    parser.add_argument("--objects", type=int, default=400)
    parser.add_argument("--modality", choices=("image", "audio"), default="image")
    parser.add_argument("--data-dir", help="local stack data directory (default: a temporary one)")
    parser.add_argument("--model", default=None, help="env IB_MODEL")
    parser.add_argument("--checkpoint", default=None, help="env IB_CHECKPOINT")
    args, beam_args = parser.parse_known_args(argv)

    import os

    import weaviate

    from ib_vectorizer.modalities import Modality

    from ..schema import MediaField, create_bind_collection
    from ..stack import LocalStack
    from .pipeline import main as ingest

    model = args.model or os.environ.get("IB_MODEL", "imagebind_huge")
    checkpoint = args.checkpoint or os.environ.get("IB_CHECKPOINT")
    with tempfile.TemporaryDirectory(prefix="ib-ingest-bench-") as tmp:
        root = Path(tmp) / "data"
        paths = make_dataset(root, args.objects, args.modality)
        stack_dir = args.data_dir or Path(tmp) / "stack"
        with LocalStack(stack_dir, model=model, checkpoint=checkpoint) as stack:
            e = stack.endpoints
            suffix = str(int(time.time()))
            started = time.perf_counter()
            failures = str(Path(tmp) / "failures.jsonl")
            status = ingest(["--input", str(root), "--collection", f"BenchPipeline{suffix}",
                             "--weaviate-url", e.weaviate_http, "--grpc-port",
                             str(e.weaviate_grpc_port), "--model", model,
                             *(["--checkpoint", checkpoint] if checkpoint else []),
                             "--dead-letter", failures, *beam_args])  # fmt: skip
            pipeline_s = time.perf_counter() - started
            if status != 0:
                return status
            with weaviate.connect_to_local(
                port=e.weaviate_port, grpc_port=e.weaviate_grpc_port
            ) as c:
                field = MediaField(args.modality, Modality(
                    "vision" if args.modality == "image" else args.modality))  # fmt: skip
                naive = create_bind_collection(c, f"BenchNaive{suffix}", [field])
                started = time.perf_counter()
                naive_loop(paths, root, args.modality, e.vectorizer, naive)
                naive_s = time.perf_counter() - started
                counts = {
                    name: c.collections.get(name).aggregate.over_all(total_count=True).total_count
                    for name in (f"BenchPipeline{suffix}", f"BenchNaive{suffix}")
                }
    if set(counts.values()) != {args.objects}:
        print(f"error: not every object was written: {counts}", file=sys.stderr)
        return 1
    from ib_vectorizer.serving.bench import cpu_model

    cpu = cpu_model()
    print(f"machine: {cpu}, {os.cpu_count()} cores; model {model}; {args.objects} "
          f"{args.modality} objects")  # fmt: skip
    print(f"pipeline (ib-ingest --embed local): {args.objects / pipeline_s:8.1f} objects/s "
          f"({pipeline_s:.1f} s)")  # fmt: skip
    print(f"naive loop (1 request + 1 insert):  {args.objects / naive_s:8.1f} objects/s "
          f"({naive_s:.1f} s)")  # fmt: skip
    print(f"speedup: {naive_s / pipeline_s:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
