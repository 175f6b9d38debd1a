"""docker/docker-compose.yml and its CPU override docker-compose.cpu.yml.

A pinned Weaviate with multi2vec-bind that reaches our service on the port it listens on
and starts once our service is healthy; our service built from this repository with the
Dockerfile (with a VARIANT it knows), its weights and Weaviate's data in declared volumes,
a GPU reserved in the base file and dropped (with a CPU build) by the override, and an
environment the server accepts. The health checks of the image and of compose are run
against a live server.
"""

from __future__ import annotations

import asyncio
import json
import re
import sys
import urllib.parse
from pathlib import PurePosixPath

import pytest
import yaml
from aiohttp.test_utils import TestServer

from ib_vectorizer.serving.engine import BatchingEngine
from ib_vectorizer.serving.http import create_app
from ib_vectorizer.serving.metrics import ServerMetrics
from ib_vectorizer.serving.server import DRAIN_TIMEOUT_S
from ib_vectorizer.serving.settings import ServerSettings, settings_from

from .docker_files import (
    BASE,
    DOCKER,
    DOCKERFILE,
    KNOWN_VARIABLES,
    MERGED_CPU,
    READY,
    RESET,
    ROOT,
    SERVICE,
    WEAVIATE,
    ComposeLoader,
    arg_defaults,
    container_env,
    documented_variables,
    duration_s,
    final,
    gpu_devices,
    healthcheck,
    merge,
    mounts,
    published_ports,
    run_commands,
    server_routes,
    server_variables,
)


def test_merge_follows_compose_rules():
    base = {"s": {"a": 1, "l": [1], "command": ["x"], "d": {"k": [1], "j": 2}}}
    override = {"s": {"a": 2, "l": [2], "command": ["y"], "d": {"k": RESET}, "n": 3}}
    assert merge(base, override) == {
        "s": {"a": 2, "l": [1, 2], "command": ["y"], "d": {"j": 2}, "n": 3}
    }
    with pytest.raises(NotImplementedError):
        merge({"ports": ["1:1"]}, {"ports": ["2:2"]}, ())
    assert yaml.load("k: !reset []", Loader=ComposeLoader) == {"k": RESET}


def test_compose_runs_a_pinned_weaviate_with_multi2vec_bind():
    weaviate = BASE["services"][WEAVIATE]
    image, _, tag = weaviate["image"].rpartition(":")
    assert image == "cr.weaviate.io/semitechnologies/weaviate"
    assert re.fullmatch(r"\d+\.\d+\.\d+", tag), "pin an exact Weaviate version"
    env = weaviate["environment"]
    assert "multi2vec-bind" in env["ENABLE_MODULES"].split(",")
    assert env["AUTHENTICATION_ANONYMOUS_ACCESS_ENABLED"] == "true"
    assert env["CLUSTER_HOSTNAME"] == "node1"
    assert published_ports(weaviate) == {(8080, 8080), (50051, 50051)}


def test_weaviate_reaches_our_service_on_the_port_it_listens_on():
    api = urllib.parse.urlsplit(BASE["services"][WEAVIATE]["environment"]["BIND_INFERENCE_API"])
    assert api.scheme == "http" and api.path in ("", "/")
    assert api.hostname == SERVICE and SERVICE in BASE["services"]
    for compose in (BASE, MERGED_CPU):
        port = settings_from(None, container_env(compose)).port
        assert api.port == port
    exposed = {word for i in final("EXPOSE") for word in i.args.split()}
    assert str(api.port) in exposed


def test_our_service_builds_this_repo_with_the_dockerfile():
    build = BASE["services"][SERVICE]["build"]
    context = (DOCKER / build["context"]).resolve()
    assert context == ROOT
    assert (context / build["dockerfile"]).resolve() == DOCKERFILE
    assert build["args"]["BAKE_WEIGHTS"] in ("0", "1")
    # The two variants get different tags, so building one does not replace the other.
    assert BASE["services"][SERVICE]["image"] != MERGED_CPU["services"][SERVICE]["image"]


def test_weaviate_starts_after_our_service_is_healthy():
    assert BASE["services"][WEAVIATE]["depends_on"][SERVICE]["condition"] == "service_healthy"
    check = BASE["services"][SERVICE]["healthcheck"]
    assert check["test"][0] == "CMD" and any(READY in word for word in check["test"])
    assert ("GET", READY) in server_routes()
    assert duration_s(check["start_period"]) >= 10 * 60  # download + load take minutes
    assert duration_s(check["timeout"]) < duration_s(check["interval"])
    weaviate_check = " ".join(BASE["services"][WEAVIATE]["healthcheck"]["test"])
    assert "http://127.0.0.1:8080/v1/.well-known/ready" in weaviate_check
    # docker stop waits long enough for the server's drain.
    assert duration_s(BASE["services"][SERVICE]["stop_grace_period"]) > DRAIN_TIMEOUT_S


def test_volumes_for_weights_and_weaviate_data_are_declared_and_mounted():
    declared = set(BASE["volumes"])
    ours = mounts(BASE["services"][SERVICE])
    checkpoint = PurePosixPath(container_env(BASE)["IB_CHECKPOINT"])
    assert ours.get(str(checkpoint.parent)) in declared
    (volume,) = final("VOLUME")
    assert json.loads(volume.args) == [str(checkpoint.parent)]
    weaviate = BASE["services"][WEAVIATE]
    data_path = weaviate["environment"]["PERSISTENCE_DATA_PATH"]
    assert mounts(weaviate).get(data_path) in declared
    assert ours[str(checkpoint.parent)] != mounts(weaviate)[data_path]


def test_compose_env_names_are_documented_server_settings():
    documented = documented_variables()
    for compose in (BASE, MERGED_CPU):
        names = server_variables(compose["services"][SERVICE]["environment"])
        assert "ENABLE_CUDA" in names
        for name in names:
            assert name in KNOWN_VARIABLES and name in documented, name


def test_image_and_compose_env_are_accepted_by_the_server():
    gpu = settings_from(None, container_env(BASE))
    assert (gpu.host, gpu.port) == ("0.0.0.0", 8080)
    assert gpu.checkpoint == "/models/imagebind_huge.pth"
    assert gpu.device_list(cuda_available=False) == ["cuda:0"]  # ENABLE_CUDA=1 means CUDA
    cpu = settings_from(None, container_env(MERGED_CPU))
    assert cpu.device_list(cuda_available=True) == ["cpu"]
    assert cpu.checkpoint == gpu.checkpoint


def test_gpu_is_reserved_in_the_base_file():
    (device,) = gpu_devices(BASE["services"][SERVICE])
    assert device["driver"] == "nvidia"
    assert device.get("count") in (1, "all") or device.get("device_ids")
    assert BASE["services"][SERVICE]["environment"]["ENABLE_CUDA"] == "1"
    assert BASE["services"][SERVICE]["build"]["args"]["VARIANT"] == "cuda"


def test_cpu_override_builds_cpu_and_drops_the_gpu_reservation():
    ours = MERGED_CPU["services"][SERVICE]
    assert gpu_devices(ours) == []
    assert ours["build"]["args"]["VARIANT"] == "cpu"
    assert ours["environment"]["ENABLE_CUDA"] == "0"
    # Everything else is the base file's.
    base = BASE["services"][SERVICE]
    for key in ("volumes", "healthcheck", "stop_grace_period", "restart"):
        assert ours[key] == base[key], key
    assert ours["build"]["context"] == base["build"]["context"]
    assert ours["environment"]["IB_CHECKPOINT"] == base["environment"]["IB_CHECKPOINT"]
    assert MERGED_CPU["services"][WEAVIATE] == BASE["services"][WEAVIATE]
    assert MERGED_CPU["volumes"] == BASE["volumes"]
    # Without the !reset the device list would be appended to, not removed.
    without_reset = merge(
        BASE, yaml.safe_load((DOCKER / "docker-compose.cpu.yml").read_text().replace("!reset ", ""))
    )
    assert gpu_devices(without_reset["services"][SERVICE]) != []


def test_compose_variants_are_ones_the_dockerfile_knows():
    (run,) = [i.args for i in run_commands() if '"$VARIANT"' in i.args]
    labels = set(re.findall(r"(\w+)\) index=", run))
    assert arg_defaults()["VARIANT"] in labels
    for compose in (BASE, MERGED_CPU):
        assert compose["services"][SERVICE]["build"]["args"]["VARIANT"] in labels


async def _probe(command: list[str], port: int) -> int:
    process = await asyncio.create_subprocess_exec(
        *command,
        env={"IB_PORT": str(port)},
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    return await asyncio.wait_for(process.wait(), timeout=30)


async def _health_checks_follow_readiness(commands: list[list[str]]) -> None:
    engine = BatchingEngine(ServerSettings(), ServerMetrics())  # loading: ready answers 503
    try:
        async with TestServer(create_app(engine), host="127.0.0.1") as server:
            for command in commands:
                assert await _probe(command, server.port) != 0, command
            engine.state = "ready"
            for command in commands:
                assert await _probe(command, server.port) == 0, command
            engine.drain()
            for command in commands:
                assert await _probe(command, server.port) != 0, command
    finally:
        engine.close()


def test_health_checks_probe_the_real_ready_route():
    """The Dockerfile's and compose's checks, run against the server: fail, pass, fail."""
    _, image_check = healthcheck()
    compose_check = BASE["services"][SERVICE]["healthcheck"]["test"][1:]
    commands = []
    for command in (image_check, compose_check):
        assert command[0] == "python"  # the venv's, first on the image's PATH
        commands.append([sys.executable, *command[1:]])
    asyncio.run(_health_checks_follow_readiness(commands))


def test_compose_files_run_on_docker_engine_20_10():
    """No setting Compose refuses on engines before 25 (Debian 12's docker.io is 20.10)."""
    for compose in (BASE, MERGED_CPU):
        for name, service in compose["services"].items():
            assert "start_interval" not in service.get("healthcheck", {}), name
