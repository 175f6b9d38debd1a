"""End to end against the real Weaviate: it calls our server, we query it."""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from weaviate.classes.query import MetadataQuery, NearMediaType
from weaviate.util import generate_uuid5

from ib_vectorizer.modalities import Modality
from ib_vectorizer.server_process import free_ports
from pipelines.schema import MediaField, combine_like_weaviate, create_bind_collection

from .fixture_data import FIXTURE, INPUTS
from .server_process import TINY_ENV

MEDIA = {  # property → (modality, near_media type, fixture manifest key)
    "image": (Modality.VISION, NearMediaType.IMAGE, "vision"),
    "audio": (Modality.AUDIO, NearMediaType.AUDIO, "audio"),
    "video": (Modality.VIDEO, NearMediaType.VIDEO, "video"),
    "depth": (Modality.DEPTH, NearMediaType.DEPTH, "depth"),
    "thermal": (Modality.THERMAL, NearMediaType.THERMAL, "thermal"),
    "imu": (Modality.IMU, NearMediaType.IMU, "imu"),
}


def b64(name: str) -> str:
    return base64.b64encode((INPUTS / name).read_bytes()).decode()


@pytest.fixture(scope="module")
def media_collection(client, manifest, texts):
    fields = [MediaField(name, modality) for name, (modality, _, _) in MEDIA.items()]
    fields.append(MediaField("caption", Modality.TEXT))
    collection = create_bind_collection(client, "Media", fields)
    with collection.batch.fixed_size(batch_size=20) as batch:
        for prop, (_, _, key) in MEDIA.items():
            for name in manifest[key]:
                batch.add_object({prop: b64(name), "source_id": name}, uuid=generate_uuid5(name))
        for i, text in enumerate(texts[:3]):
            batch.add_object(
                {"caption": text, "source_id": f"text{i}"}, uuid=generate_uuid5(f"text{i}")
            )
    assert collection.batch.failed_objects == []
    return collection


def vectorize(stack, payload: dict) -> dict:
    request = urllib.request.Request(
        stack.endpoints.vectorizer + "/vectorize",
        data=json.dumps(payload).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())


@pytest.mark.parametrize("prop", list(MEDIA))
def test_near_media_finds_the_object_with_the_same_media(media_collection, manifest, prop):
    _, media_type, key = MEDIA[prop]
    for name in manifest[key]:
        result = media_collection.query.near_media(
            media=b64(name),
            media_type=media_type,
            limit=3,
            return_metadata=MetadataQuery(distance=True),
        )
        first = result.objects[0]
        assert str(first.uuid) == generate_uuid5(name), (
            name,
            [o.properties for o in result.objects],
        )
        assert first.metadata.distance < 1e-4
        assert result.objects[1].metadata.distance > 1e-3


def test_near_text_on_a_text_property(media_collection, texts):
    result = media_collection.query.near_text(
        query=texts[1], limit=2, return_metadata=MetadataQuery(distance=True)
    )
    assert str(result.objects[0].uuid) == generate_uuid5("text1")
    assert result.objects[0].metadata.distance < 1e-4


def test_all_objects_were_vectorized_by_our_server(media_collection, manifest, stack):
    total = sum(len(manifest[key]) for _, _, key in MEDIA.values()) + 3
    assert media_collection.aggregate.over_all(total_count=True).total_count == total
    with urllib.request.urlopen(stack.endpoints.vectorizer + "/metrics", timeout=10) as response:
        metrics = response.read().decode()
    assert 'ib_items_embedded_total{modality="video"}' in metrics


@pytest.mark.parametrize("present", [("caption", "image", "audio"), ("image", "audio")])
def test_weighted_fields_combine_exactly_as_our_code_says(client, stack, texts, present):
    fields = [
        MediaField("caption", Modality.TEXT, weight=0.2),
        MediaField("image", Modality.VISION, weight=0.5),
        MediaField("audio", Modality.AUDIO, weight=0.3),
    ]
    collection = create_bind_collection(client, "Weighted", fields)
    values = {"caption": texts[0], "image": b64("image_rgb.jpg"), "audio": b64("tone_16k_mono.wav")}
    properties = {name: values[name] for name in present}
    uuid = generate_uuid5("-".join(present))
    collection.data.insert({**properties, "source_id": "x"}, uuid=uuid)
    stored = np.array(
        collection.query.fetch_object_by_id(uuid, include_vector=True).vector["imagebind"]
    )
    answer = vectorize(
        stack,
        {"texts": [values["caption"]], "images": [values["image"]], "audio": [values["audio"]]},
    )
    ours = {
        "caption": answer["textVectors"][0],
        "image": answer["imageVectors"][0],
        "audio": answer["audioVectors"][0],
    }
    expected = combine_like_weaviate({k: ours[k] for k in present}, fields)
    cosine = stored @ expected / np.linalg.norm(stored) / np.linalg.norm(expected)
    assert cosine >= 0.9999
    np.testing.assert_allclose(stored, expected, rtol=1e-3, atol=1e-5)


def test_reinserting_an_id_replaces_the_object(client):
    fields = [MediaField("image", Modality.VISION)]
    collection = create_bind_collection(client, "Replace", fields)
    for caption_source in ["first", "second"]:
        with collection.batch.fixed_size(batch_size=10) as batch:
            batch.add_object(
                {"image": b64("image_gray.png"), "source_id": caption_source},
                uuid=generate_uuid5("same-source"),
            )
        assert collection.batch.failed_objects == []
    assert collection.aggregate.over_all(total_count=True).total_count == 1
    assert (
        collection.query.fetch_object_by_id(generate_uuid5("same-source")).properties["source_id"]
        == "second"
    )


def ib_query(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pipelines.query", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **TINY_ENV},
    )


def test_ib_query_json_and_table(stack, media_collection):
    where = [
        "--weaviate-url",
        stack.endpoints.weaviate_http,
        "--grpc-port",
        str(stack.endpoints.weaviate_grpc_port),
    ]
    image = str(INPUTS / "image_rgba.png")
    result = ib_query(
        "--collection", "Media", "--near-image", image, "--limit", "3", "--json", *where
    )
    assert result.returncode == 0, result.stderr
    hits = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(hits) == 3 and set(hits[0]) == {"id", "distance", "properties"}
    assert hits[0]["id"] == str(generate_uuid5("image_rgba.png"))
    assert hits[0]["distance"] < 1e-4
    assert "image" not in hits[0]["properties"]  # blobs left out
    assert hits[0]["properties"]["source_id"] == "image_rgba.png"
    table = ib_query(
        "--collection", "Media", "--near-text", "a dog barking", "--limit", "2", *where
    )
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split() == ["#", "distance", "id", "properties"] and len(lines) == 3
    assert "source_id=" in lines[1]


def test_ib_query_errors_are_one_clear_line(stack, tmp_path):
    where = [
        "--weaviate-url",
        stack.endpoints.weaviate_http,
        "--grpc-port",
        str(stack.endpoints.weaviate_grpc_port),
    ]
    missing = ib_query("--collection", "Nope", "--near-text", "x", *where)
    assert missing.returncode != 0 and "collection 'Nope' does not exist" in missing.stderr
    unreadable = ib_query("--collection", "Media", "--near-audio", str(tmp_path / "no.wav"), *where)
    assert unreadable.returncode != 0 and "cannot read" in unreadable.stderr
    dead_http, dead_grpc = free_ports(2)  # nothing listens there
    url = f"http://127.0.0.1:{dead_http}"
    unreachable = ib_query(
        "--collection",
        "Media",
        "--near-text",
        "x",
        "--weaviate-url",
        url,
        "--grpc-port",
        str(dead_grpc),
    )
    assert unreachable.returncode != 0
    assert len(unreachable.stderr.strip().splitlines()) == 1, unreachable.stderr


def start_stack_cli(data_dir) -> tuple[subprocess.Popen, dict[str, str]]:
    """``ib-stack``, the console script a user runs, on the tiny model."""
    ib_stack = Path(sys.executable).parent / "ib-stack"
    process = subprocess.Popen(
        [str(ib_stack), "--data-dir", str(data_dir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={**os.environ, **TINY_ENV},
    )
    lines = [process.stdout.readline().rstrip("\n") for _ in range(3)]
    assert lines[0].startswith("weaviate http: http://127.0.0.1:"), lines
    assert lines[1].startswith("weaviate grpc: 127.0.0.1:"), lines
    assert lines[2].startswith("vectorizer: http://127.0.0.1:"), lines
    return process, dict(line.split(": ", 1) for line in lines)


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def test_stack_command_persists_data_and_stops_cleanly(tmp_path):
    import weaviate

    data_dir = tmp_path / "persist"
    process, endpoints = start_stack_cli(data_dir)
    http_port = int(endpoints["weaviate http"].rsplit(":", 1)[1])
    grpc_port = int(endpoints["weaviate grpc"].rsplit(":", 1)[1])
    vectorizer_port = int(endpoints["vectorizer"].rsplit(":", 1)[1])
    with weaviate.connect_to_local(port=http_port, grpc_port=grpc_port) as client:
        collection = create_bind_collection(client, "Kept", [MediaField("image", Modality.VISION)])
        collection.data.insert(
            {"image": b64("image_rgb.jpg"), "source_id": "kept"}, uuid=generate_uuid5("kept")
        )
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) == 0
    # After the three endpoint lines, one line for its one Weaviate node, and nothing else.
    (node_line,) = process.stdout.read().splitlines()
    assert node_line.startswith(f"weaviate node 1: {endpoints['weaviate http']} grpc "), node_line
    time.sleep(0.5)
    assert not port_open(http_port) and not port_open(vectorizer_port)

    # The embedded stack again, this time started by ib-query on the same data directory.
    found = ib_query(
        "--data-dir",
        str(data_dir),
        "--collection",
        "Kept",
        "--near-image",
        str(INPUTS / "image_rgb.jpg"),
        "--json",
    )
    assert found.returncode == 0, found.stderr
    hit = json.loads(found.stdout.splitlines()[0])
    assert hit["id"] == str(generate_uuid5("kept")) and hit["distance"] < 1e-4


def test_fixture_config_is_what_the_stack_serves(stack):
    with urllib.request.urlopen(stack.endpoints.vectorizer + "/meta", timeout=10) as response:
        meta = json.loads(response.read())
    assert meta["embeddingDim"] == 32 and meta["model"] == str(FIXTURE / "config.json")
