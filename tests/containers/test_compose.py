"""docker/docker-compose.yml with the CPU override, brought up for real.

Weaviate (its image, here built from the provisioned binary) waits for our container to be
healthy, then vectorizes through it: a collection, inserts and near-image queries go
through the two containers, and the stored vectors are the ones `ib-vectorizer embed`
computes. `down -v` then leaves no container, network or volume of the project.
"""

from __future__ import annotations

import os
import subprocess

import numpy as np
import pytest
import weaviate
from weaviate.util import generate_uuid5

from ib_vectorizer.modalities import Modality
from pipelines.schema import DEFAULT_VECTOR_NAME, MediaField, create_bind_collection

from ..fixture_data import FIXTURE, INPUTS, embed_with_cli
from ..wire import b64
from .docker import unique_name
from .provision import ROOT, docker

COMPOSE_FILES = [
    ROOT / "docker" / "docker-compose.yml",
    ROOT / "docker" / "docker-compose.cpu.yml",
    ROOT / "tests" / "containers" / "compose.test.yml",
]


class ComposeProject:
    """``docker compose -p NAME -f ... `` with the test's variables; ``down -v`` on exit."""

    def __init__(self, image: str) -> None:
        self.name = unique_name("ibtest")
        self.env = {**os.environ, "IB_TEST_IMAGE": image, "IB_TEST_FIXTURE": str(FIXTURE)}

    def __call__(self, *args: str, timeout: float = 900) -> subprocess.CompletedProcess:
        files = [word for path in COMPOSE_FILES for word in ("-f", str(path))]
        return subprocess.run(
            ["docker", "compose", "-p", self.name, *files, *args],
            capture_output=True,
            text=True,
            env=self.env,
            timeout=timeout,
        )

    def port(self, service: str, port: int) -> int:
        result = self("port", service, str(port))
        assert result.returncode == 0, result.stderr
        return int(result.stdout.strip().rsplit(":", 1)[1])

    def leftovers(self) -> dict[str, list[str]]:
        label = f"label=com.docker.compose.project={self.name}"
        return {
            kind: docker(*command, "--filter", label, "-q").stdout.split()
            for kind, command in {
                "containers": ("ps", "-a"),
                "networks": ("network", "ls"),
                "volumes": ("volume", "ls"),
            }.items()
        }


@pytest.fixture(scope="module")
def project(image):
    compose = ComposeProject(image)
    up = compose("up", "-d", "--wait", "--wait-timeout", "600")
    try:
        assert up.returncode == 0, up.stdout + up.stderr + compose("logs").stdout[-5000:]
        yield compose
    finally:
        down = compose("down", "-v", "--timeout", "75")
        assert down.returncode == 0, down.stderr


@pytest.fixture(scope="module")
def client(project):
    with weaviate.connect_to_local(
        host="127.0.0.1",
        port=project.port("weaviate", 8080),
        grpc_port=project.port("weaviate", 50051),
    ) as connected:
        yield connected


def test_both_services_are_healthy_and_weaviate_knows_our_module(project, client):
    for service in ("ib-vectorizer", "weaviate"):
        container = project("ps", "-q", service).stdout.strip()
        state = docker("inspect", "--format", "{{.State.Health.Status}}", container).stdout
        assert state.strip() == "healthy", service
    modules = client.get_meta()["modules"]
    assert "multi2vec-bind" in modules


def test_insert_and_near_image_go_through_our_container(client, manifest, tmp_path):
    photos = create_bind_collection(client, "Photos", [MediaField("image", Modality.VISION)])
    names = manifest["vision"]
    with photos.batch.fixed_size(batch_size=10) as batch:
        for name in names:
            batch.add_object(
                {"image": b64(INPUTS / name), "source_id": name}, uuid=generate_uuid5(name)
            )
    assert photos.batch.failed_objects == []
    assert len(photos) == len(names)

    on_host = embed_with_cli("vision", [str(INPUTS / n) for n in names], tmp_path / "vision.npy")
    for name, expected in zip(names, on_host, strict=True):
        stored = photos.query.fetch_object_by_id(generate_uuid5(name), include_vector=True)
        vector = np.array(stored.vector[DEFAULT_VECTOR_NAME])
        cosine = vector @ expected / np.linalg.norm(vector) / np.linalg.norm(expected)
        assert cosine >= 0.9999, name
        found = photos.query.near_image(b64(INPUTS / name), limit=1).objects
        assert str(found[0].uuid) == generate_uuid5(name), name


def test_down_v_leaves_nothing_behind(project, client):
    """Last in this module: it takes the stack down (the fixture's own `down -v` is a no-op)."""
    client.close()
    before = project.leftovers()
    assert len(before["containers"]) == 2 and len(before["volumes"]) == 2, before
    down = project("down", "-v", "--timeout", "75")
    assert down.returncode == 0, down.stderr
    assert project.leftovers() == {"containers": [], "networks": [], "volumes": []}
