"""The runnable examples of docs/beam-plugin.md, run as a user runs them, against the real Weaviate.

Each example is a script in ``examples/beam/`` run in its own process on a Beam
runner (``--runner`` from :data:`RUNNER_FLAGS`); ``tests/dist`` runs the same
scripts on a Flink cluster through :func:`run_example`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pipelines.beam import object_uuid
from pipelines.query import main as ib_query

from .fixture_data import INPUTS
from .server_process import TINY_ENV
from .test_cli import embed as cli_embed
from .test_ingest import copy_dataset, run_ingest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "beam"
TINY = ["--model", TINY_ENV["IB_MODEL"], "--checkpoint", TINY_ENV["IB_CHECKPOINT"]]


def run_example(name: str, *args: str, beam_flags: tuple[str, ...] = ()) -> None:
    """``python examples/beam/<name>.py ARGS`` with the tiny model; fails with its stderr."""
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / f"{name}.py"), *args, *TINY, *beam_flags],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    assert result.returncode == 0, result.stderr[-3000:]


def read_jsonl(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def unit(vectors: np.ndarray) -> np.ndarray:
    return vectors / np.linalg.norm(vectors, axis=-1, keepdims=True)


def weaviate_flags(stack) -> list[str]:
    e = stack.endpoints
    return ["--weaviate-url", e.weaviate_http, "--grpc-port", str(e.weaviate_grpc_port)]


def check_embed_audio(tmp_path: Path, beam_flags: tuple[str, ...] = ()) -> None:
    """A folder of audio, one file not audio at all: vectors for the rest, a dead letter."""
    folder = tmp_path / "sounds"
    folder.mkdir()
    for name in ("tone_16k_mono.wav", "chirp_44k_stereo.wav", "short_8k_mono.wav"):
        shutil.copy(INPUTS / name, folder / name)
    (folder / "notes.wav").write_text("not a recording")
    out = tmp_path / "vectors.jsonl"
    run_example(
        "embed_audio", "--input", str(folder / "*.wav"), "--output", str(out), beam_flags=beam_flags
    )
    rows = {Path(row["path"]).name: np.array(row["vector"]) for row in read_jsonl(out)}
    names = sorted(rows)
    assert names == ["chirp_44k_stereo.wav", "short_8k_mono.wav", "tone_16k_mono.wav"]
    expected = cli_embed(tmp_path, "audio", [str(folder / n) for n in names])
    got = np.stack([rows[n] for n in names])
    assert (np.sum(unit(got) * unit(expected), axis=1) >= 0.9999).all()
    (failure,) = read_jsonl(Path(f"{out}.failures"))
    assert failure["item"].endswith("notes.wav") and "notes.wav" in failure["error"]


def check_rag_ingest(stack, client, tmp_path: Path, collection: str, beam_flags=()) -> None:
    """Text lines and photos → MLTransform(ImageBindEmbeddings) → WeaviateWriteConfig."""
    texts = ["a dog barking loudly", "waves on a pebble beach"]
    (tmp_path / "notes.txt").write_text("\n".join(texts) + "\n")
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("image_rgb.jpg", "image_rgba.png"):
        shutil.copy(INPUTS / name, photos / name)
    failures = tmp_path / "rag-failures.jsonl"
    run_example(
        "rag_ingest", "--texts", str(tmp_path / "notes.txt"), "--photos", str(photos / "*"),
        "--collection", collection, "--failures", str(failures), *weaviate_flags(stack),
        beam_flags=beam_flags,
    )  # fmt: skip
    assert read_jsonl(failures) == []
    stored = client.collections.get(collection)
    paths = sorted(str(p) for p in photos.iterdir())
    expected = dict(
        zip([f"text:{t}" for t in texts], cli_embed(tmp_path, "text", texts), strict=True)
    )
    photo_vectors = cli_embed(tmp_path, "vision", paths)
    expected |= dict(zip([f"photo:{p}" for p in paths], photo_vectors, strict=True))
    assert stored.aggregate.over_all(total_count=True).total_count == len(expected)
    for chunk_id, vector in expected.items():
        obj = stored.query.fetch_object_by_id(object_uuid(chunk_id), include_vector=True)
        got = np.array(obj.vector["imagebind"])
        assert float(unit(got) @ unit(vector)) >= 0.9999, chunk_id


def ib_query_ids(stack, capsys, collection: str, *query: str) -> list[str]:
    capsys.readouterr()
    args = ["--collection", collection, "--limit", "4", "--json", *weaviate_flags(stack)]
    assert ib_query([*args, *query]) == 0
    return [json.loads(line)["id"] for line in capsys.readouterr().out.splitlines()]


def check_enrich_queries(stack, capsys, tmp_path: Path, collection: str, beam_flags=()) -> None:
    """Text and image queries → Enrichment(WeaviateSearchEnrichmentHandler): ib-query's hits."""
    photo = str(INPUTS / "image_gray.png")
    queries = tmp_path / "queries.jsonl"
    queries.write_text(
        json.dumps({"id": "by-text", "text": "a dog barking loudly"})
        + "\n"
        + json.dumps({"id": "by-photo", "image": photo})
        + "\n"
    )
    out = tmp_path / "neighbours.jsonl"
    run_example(
        "enrich_queries", "--queries", str(queries), "--collection", collection,
        "--output", str(out), "--limit", "4", *weaviate_flags(stack), beam_flags=beam_flags,
    )  # fmt: skip
    found = {row["id"]: row["neighbours"] for row in read_jsonl(out)}
    assert found["by-text"] == ib_query_ids(
        stack, capsys, collection, "--near-text", "a dog barking loudly"
    )
    assert found["by-photo"] == ib_query_ids(stack, capsys, collection, "--near-image", photo)
    assert len(found["by-photo"]) == 4


@pytest.fixture(scope="module")
def media_collection(stack, tmp_path_factory) -> str:
    """A collection of every modality, made by ib-ingest: what the queries search."""
    root = tmp_path_factory.mktemp("media")
    tree = copy_dataset(root / "tree")
    assert run_ingest(stack, tree, "ExampleMedia", root / "f.jsonl") == 0
    return "ExampleMedia"


def test_embed_audio_example(tmp_path):
    check_embed_audio(tmp_path)


def test_rag_ingest_example(stack, client, tmp_path):
    check_rag_ingest(stack, client, tmp_path, "ExampleRag")


@pytest.mark.parametrize("runner", ["FnApiRunner", "PrismRunner"])
def test_enrich_queries_example(stack, capsys, media_collection, tmp_path, runner):
    flags = (f"--runner={runner}",) + (("--streaming",) if runner == "PrismRunner" else ())
    check_enrich_queries(stack, capsys, tmp_path, media_collection, flags)
