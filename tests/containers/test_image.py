"""The image built from docker/Dockerfile, run with the fixture weights mounted.

It becomes healthy through its own HEALTHCHECK, answers /vectorize for every modality
with the vectors `ib-vectorizer embed` computes on the host, runs as uid 10001, says what
to do when it cannot get weights, and drains a request in flight on `docker stop`.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from ..fixture_data import INPUTS, embed_with_cli
from ..wire import WIRE, post
from .conftest import FIXTURE_ENV, FIXTURE_MOUNT, env_flags
from .docker import Container
from .provision import docker, inspect

PUBLISH = ("-p", "127.0.0.1::8080")


@pytest.fixture(scope="module")
def server(image):
    with Container(image, *PUBLISH, *FIXTURE_MOUNT, *env_flags(FIXTURE_ENV)) as container:
        container.wait_healthy(timeout_s=300)
        yield container


def test_the_image_runs_the_server_as_uid_10001(image, server):
    config = inspect("image", image)["Config"]
    assert config["User"] == "10001:10001"
    assert config["Labels"]["ib-vectorizer.variant"] == "cuda"
    assert docker("run", "--rm", image, "id", "-u").stdout.strip() == "10001"
    # The server itself (PID 1, exec'd by the entrypoint), not only the image's default.
    status = docker("exec", server.name, "cat", "/proc/1/status").stdout
    assert "\t10001\t" in next(line for line in status.splitlines() if line.startswith("Uid:"))
    cmdline = docker("exec", server.name, "cat", "/proc/1/cmdline").stdout.split("\0")
    assert "serve" in cmdline


def test_it_becomes_healthy_through_its_own_health_check(server):
    assert server.health() == "healthy"
    log = server.state()["Health"]["Log"]
    assert log and log[-1]["ExitCode"] == 0
    assert server.ready() == 204


@pytest.mark.parametrize("key", list(WIRE))
def test_vectorize_equals_ib_vectorizer_embed(server, wire_items, manifest, texts, key, tmp_path):
    status, body, _ = post(server.url(), {key: wire_items[key]})
    assert status == 200, body
    modality, response_key = WIRE[key]
    inputs = texts if key == "texts" else [str(INPUTS / name) for name in manifest[modality]]
    expected = embed_with_cli(modality, inputs, tmp_path / f"{modality}.npy")
    vectors = np.array(body[response_key], dtype=np.float32)
    assert vectors.shape == expected.shape
    np.testing.assert_allclose(vectors, expected, atol=1e-5)


def test_all_modalities_in_one_request_keep_their_order(server, wire_items):
    status, together, _ = post(server.url(), wire_items)
    assert status == 200, together
    for key, (_, response_key) in WIRE.items():
        alone = post(server.url(), {key: wire_items[key]})[1][response_key]
        np.testing.assert_allclose(together[response_key], alone, atol=1e-5)


def test_a_bad_item_is_named_and_the_container_keeps_serving(server, wire_items):
    status, body, _ = post(server.url(), {"images": [wire_items["images"][0], "bm90IGFuIGltYWdl"]})
    assert status == 400
    assert "images[1]" in body["error"], body
    assert post(server.url(), {"texts": ["still here"]})[0] == 200


def test_weights_that_cannot_be_downloaded_are_a_clear_error(image, tmp_path):
    """A read-only, empty /models: the entrypoint says to chown it or add the file."""
    tmp_path.chmod(0o755)
    result = docker("run", "--rm", "-v", f"{tmp_path}:/models:ro", image, check=False)
    assert result.returncode == 1
    assert "/models is not writable by uid 10001" in result.stderr
    assert "imagebind_huge.pth" in result.stderr


def test_docker_stop_drains_a_request_in_flight(image, wire_items):
    # A batch waits up to 3 s for company, so the request is still in flight at `docker stop`.
    env = {**FIXTURE_ENV, "IB_MAX_WAIT_MS": "3000", "IB_MAX_BATCH": "1000", "IB_LOG_LEVEL": "INFO"}
    with Container(image, *PUBLISH, *FIXTURE_MOUNT, *env_flags(env)) as container:
        container.wait_healthy(timeout_s=300)
        url = container.url()
        with ThreadPoolExecutor(max_workers=2) as pool:
            pending = pool.submit(post, url, {"images": wire_items["images"][:1]}, None, 60)
            time.sleep(1.0)
            assert not pending.done()
            stopping = pool.submit(docker, "stop", "--time", "75", container.name)
            status, body, _ = pending.result(timeout=60)
            stopping.result(timeout=90)
        assert status == 200 and len(body["imageVectors"]) == 1
        state = container.state()
        assert not state["Running"] and state["ExitCode"] == 0, container.logs()
        assert "finishing 1 request(s) in flight" in container.logs()
