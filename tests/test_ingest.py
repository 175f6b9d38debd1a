"""ib-ingest end to end: Beam (DirectRunner and Prism) into the real Weaviate."""

from __future__ import annotations

import base64
import csv
import json
import logging
import shutil
import urllib.request

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from weaviate.classes.query import MetadataQuery, NearMediaType
from weaviate.util import generate_uuid5

from ib_vectorizer.modalities import Modality
from ib_vectorizer.serving.protocol import RESPONSE_KEYS, WIRE_NAME
from pipelines.ingest.command import main as ingest
from pipelines.schema import MediaField, combine_like_weaviate

from .fixture_data import INPUTS
from .server_process import TINY_ENV

DIRECTORY_FILES = {  # relative path → fixture file
    "image/cat.jpg": "image_rgb.jpg",
    "photos/logo.png": "image_rgba.png",  # by extension
    "audio/tone.wav": "tone_16k_mono.wav",
    "sounds/chirp.wav": "chirp_44k_stereo.wav",
    "video/a.mp4": "video_a.mp4",
    "depth/d.png": "depth_a.png",
    "thermal/t.jpg": "thermal_a.jpg",
    "imu/walk.csv": "imu_2000.csv",
    "misc/run.csv": "imu_1500.csv",  # .csv → imu
}
MODALITY_OF_FOLDER = {
    "image": Modality.VISION,
    "photos": Modality.VISION,
    "audio": Modality.AUDIO,
    "sounds": Modality.AUDIO,
    "video": Modality.VIDEO,
    "depth": Modality.DEPTH,
    "thermal": Modality.THERMAL,
    "imu": Modality.IMU,
    "misc": Modality.IMU,
    "text": Modality.TEXT,
}


def copy_dataset(root):
    """A tree of every modality, from the fixture files, at ``root``."""
    for relative, fixture in DIRECTORY_FILES.items():
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(INPUTS / fixture, root / relative)
    (root / "text").mkdir()
    (root / "text" / "note.txt").write_text("a dog barking loudly")
    return root


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return copy_dataset(tmp_path_factory.mktemp("dataset"))


def run_ingest(stack, source, collection: str, dead_letter, *args: str) -> int:
    """``ib-ingest`` of ``source`` into ``collection`` of the test stack, on the tiny model."""
    e = stack.endpoints
    return ingest(
        [
            "--input",
            str(source),
            "--collection",
            collection,
            "--dead-letter",
            str(dead_letter),
            "--weaviate-url",
            e.weaviate_http,
            "--grpc-port",
            str(e.weaviate_grpc_port),
            "--model",
            TINY_ENV["IB_MODEL"],
            "--checkpoint",
            TINY_ENV["IB_CHECKPOINT"],
            "--vectorizer-url",
            e.vectorizer,
            *args,
        ]
    )


def server_vector(stack, modality: Modality, content: bytes | str) -> np.ndarray:
    key, answer_key = WIRE_NAME[modality], RESPONSE_KEYS[modality]
    item = content if modality is Modality.TEXT else base64.b64encode(content).decode()
    request = urllib.request.Request(
        stack.endpoints.vectorizer + "/vectorize",
        data=json.dumps({key: [item]}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        return np.array(json.loads(response.read())[answer_key][0])


def stored(collection, source_id: str) -> np.ndarray:
    obj = collection.query.fetch_object_by_id(generate_uuid5(source_id), include_vector=True)
    assert obj is not None, source_id
    return np.array(obj.vector["imagebind"])


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def count(client, name: str) -> int:
    return client.collections.get(name).aggregate.over_all(total_count=True).total_count


def assert_vectors_like_the_server(stack, collection, dataset, source_ids) -> None:
    """Each stored vector is the one our inference server computes for that file."""
    for source_id in source_ids:
        modality = MODALITY_OF_FOLDER[source_id.split("/")[0]]
        path = dataset / source_id
        content = path.read_text() if modality is Modality.TEXT else path.read_bytes()
        ours = server_vector(stack, modality, content)
        assert cosine(stored(collection, source_id), ours) >= 0.9999, source_id


def read_failures(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_directory_of_all_modalities(stack, client, dataset, tmp_path):
    failures = tmp_path / "failures.jsonl"
    assert run_ingest(stack, str(dataset), "Dir", str(failures)) == 0
    assert read_failures(failures) == []
    expected_ids = [*DIRECTORY_FILES, "text/note.txt"]
    assert count(client, "Dir") == len(expected_ids)
    collection = client.collections.get("Dir")
    assert_vectors_like_the_server(stack, collection, dataset, expected_ids)
    photo = collection.query.near_media(
        media=base64.b64encode((dataset / "photos/logo.png").read_bytes()).decode(),
        media_type=NearMediaType.IMAGE,
        limit=1,
        return_metadata=MetadataQuery(distance=True),
    )
    assert photo.objects[0].properties["source_id"] == "photos/logo.png"
    assert photo.objects[0].metadata.distance < 1e-4

    # The same job again: replaced, not duplicated.
    assert run_ingest(stack, str(dataset), "Dir", str(failures)) == 0
    assert count(client, "Dir") == len(expected_ids)


def manifest_rows(dataset) -> list[dict]:
    return [
        {
            "id": "row-1",
            "image": "image/cat.jpg",
            "text_caption": "a cat",
            "year": 2021,
            "audio": "audio/tone.wav",
        },
        {
            "id": "row-2",
            "image": "photos/logo.png",
            "text_caption": "a logo",
            "year": 2022,
            "audio": "sounds/chirp.wav",
        },
        {
            "id": "row-3",
            "image": "image/cat.jpg",
            "text_caption": "only text and image",
            "year": 2023,
            "audio": None,
        },
    ]


def write_manifest(kind: str, dataset, rows: list[dict]):
    path = dataset / f"manifest.{kind}"
    if kind == "parquet":
        pq.write_table(pa.Table.from_pylist(rows), path)
    elif kind == "jsonl":
        path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    else:
        with path.open("w", newline="") as out:
            writer = csv.DictWriter(out, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows({k: ("" if v is None else v) for k, v in row.items()} for row in rows)
    return path


FIELDS = [
    MediaField("audio", Modality.AUDIO),
    MediaField("image", Modality.VISION),
    MediaField("text_caption", Modality.TEXT),
]


@pytest.mark.parametrize("kind", ["parquet", "csv", "jsonl"])
def test_manifests_with_several_fields_per_object(stack, client, dataset, tmp_path, kind):
    rows = manifest_rows(dataset)
    manifest = write_manifest(kind, dataset, rows)
    name = f"Manifest{kind.capitalize()}"
    failures = tmp_path / "failures.jsonl"
    assert run_ingest(stack, str(manifest), name, str(failures)) == 0
    assert read_failures(failures) == []
    assert count(client, name) == len(rows)
    collection = client.collections.get(name)
    for row in rows:
        vectors = {
            "text_caption": server_vector(stack, Modality.TEXT, row["text_caption"]),
            "image": server_vector(stack, Modality.VISION, (dataset / row["image"]).read_bytes()),
        }
        if row["audio"]:
            vectors["audio"] = server_vector(
                stack, Modality.AUDIO, (dataset / row["audio"]).read_bytes()
            )
        expected = combine_like_weaviate(vectors, FIELDS)
        assert cosine(stored(collection, row["id"]), expected) >= 0.9999, row["id"]
        props = collection.query.fetch_object_by_id(generate_uuid5(row["id"])).properties
        # Metadata arrives through Weaviate's auto-schema: numbers as NUMBER, CSV cells as TEXT.
        assert props["source_id"] == row["id"] and float(props["year"]) == row["year"]


def test_corrupt_file_is_dead_lettered_and_the_rest_written(
    stack, client, dataset, tmp_path, caplog
):
    broken = tmp_path / "broken"
    shutil.copytree(dataset, broken, ignore=shutil.ignore_patterns("manifest.*"))
    (broken / "image" / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (broken / "odd.xyz").write_bytes(b"?")
    failures = tmp_path / "failures.parquet"
    with caplog.at_level(logging.INFO, logger="ib_ingest"):
        assert run_ingest(stack, str(broken), "Broken", str(failures)) == 0
    summary = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("done in"))
    written = len(DIRECTORY_FILES) + 1
    assert f"read {written + 1}, embedded {written}, written {written}, failed 1" in summary
    assert "skipped 1 (not media: odd.xyz)" in summary  # no modality claims it: not a failure
    dead = {row["id"]: row for row in pq.read_table(failures).to_pylist()}
    assert set(dead) == {"image/corrupt.jpg"}
    assert dead["image/corrupt.jpg"]["stage"] == "decode"
    assert "not a decodable image" in dead["image/corrupt.jpg"]["error"]
    assert count(client, "Broken") == len(DIRECTORY_FILES) + 1


def test_local_server_and_weaviate_embedding_agree(stack, client, dataset, tmp_path):
    manifest = write_manifest("jsonl", dataset, manifest_rows(dataset))
    for mode in ("local", "server", "weaviate"):
        assert (
            run_ingest(
                stack,
                str(manifest),
                f"Mode{mode}",
                str(tmp_path / f"{mode}.jsonl"),
                "--embed",
                mode,
            )
            == 0
        )
    for row in manifest_rows(dataset):
        local = stored(client.collections.get("Modelocal"), row["id"])
        for mode in ("server", "weaviate"):
            other = stored(client.collections.get(f"Mode{mode}"), row["id"])
            assert cosine(local, other) >= 0.9999, (mode, row["id"])


def test_prism_runner_gives_the_same_result(stack, client, dataset, tmp_path):
    manifest = write_manifest("jsonl", dataset, manifest_rows(dataset))
    assert (
        run_ingest(
            stack, str(manifest), "OnPrism", str(tmp_path / "f.jsonl"), "--runner=PrismRunner"
        )
        == 0
    )
    assert count(client, "OnPrism") == 3


def test_ingest_benchmark_command_runs_both_paths(tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.ingest_vs_naive",
            "--objects",
            "6",
            "--data-dir",
            str(tmp_path / "stack"),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, **TINY_ENV},
        cwd=Path(__file__).resolve().parent.parent,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert lines[0].startswith("machine: ") and "6 image objects" in lines[0]
    assert "pipeline (ib-ingest --embed local):" in lines[1] and "objects/s" in lines[1]
    assert "naive loop" in lines[2] and lines[3].startswith("speedup: ")


def test_store_uri_keeps_the_source_uri_instead_of_the_bytes(stack, client, dataset, tmp_path):
    manifest = write_manifest("jsonl", dataset, manifest_rows(dataset))
    assert run_ingest(stack, str(manifest), "ByUri", str(tmp_path / "f.jsonl"), "--store-uri") == 0
    collection = client.collections.get("ByUri")
    props = collection.query.fetch_object_by_id(generate_uuid5("row-1")).properties
    assert props["image_uri"] == str(dataset / "image/cat.jpg")
    assert props["audio_uri"] == str(dataset / "audio/tone.wav")
    assert props.get("image") is None and props["text_caption"] == "a cat"
    vectors = {
        "text_caption": server_vector(stack, Modality.TEXT, "a cat"),
        "image": server_vector(stack, Modality.VISION, (dataset / "image/cat.jpg").read_bytes()),
        "audio": server_vector(stack, Modality.AUDIO, (dataset / "audio/tone.wav").read_bytes()),
    }
    expected = combine_like_weaviate(vectors, FIELDS)  # the same vector as with BLOBs
    assert cosine(stored(collection, "row-1"), expected) >= 0.9999


def test_an_object_weaviate_rejects_is_dead_lettered_at_write(stack, client, dataset, tmp_path):
    from weaviate.classes.config import DataType

    from pipelines.schema import create_bind_collection

    create_bind_collection(client, "Typed", FIELDS, metadata={"year": DataType.INT})
    rows = manifest_rows(dataset)
    rows[1]["year"] = "not a year"  # Weaviate refuses text in an INT property
    manifest = write_manifest("jsonl", dataset, rows)
    failures = tmp_path / "failures.jsonl"
    assert run_ingest(stack, str(manifest), "Typed", str(failures)) == 0
    dead = read_failures(failures)
    assert [(d["id"], d["stage"]) for d in dead] == [("row-2", "write")]
    assert "year" in dead[0]["error"]
    assert count(client, "Typed") == 2
