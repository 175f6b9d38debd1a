"""docker/Dockerfile's `beam-worker` target: Beam's SDK worker image for ib-ingest.

Runners start it with Beam's boot binary as the entrypoint, so the image must hold the
boot binary of the very Beam version the pipelines pin (SDK and runner talk one
protocol), a Python with Beam and the project on PATH, and the server image's user and
layout. Parsed, not built (tests/containers/ builds it and runs ib-ingest on a Flink
cluster with it: `make docker-test`).
"""

from __future__ import annotations

import re
import tomllib

from .docker_files import (
    FINAL_STAGE,
    ROOT,
    arg_defaults,
    build_context,
    copies,
    exec_form,
    image_env,
    in_stage,
    stage_names,
)

WORKER = "beam-worker"
BOOT = "/opt/apache/beam/boot"


def pinned_beam() -> str:
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    (pin,) = [
        d for d in extras["optional-dependencies"]["pipelines"] if d.startswith("apache-beam")
    ]
    match = re.fullmatch(r"apache-beam==([0-9][0-9A-Za-z.]*)", pin)
    assert match, f"apache-beam must be pinned exactly (its job servers match it): {pin!r}"
    return match.group(1)


def stage_from(name: str) -> str:
    (instruction,) = in_stage(stage_names()[name], "FROM")
    return instruction.args.split()[0]


def test_beam_worker_target_starts_beams_boot_binary():
    stages = stage_names()
    assert {WORKER, "worker-builder", "beam-sdk"} <= set(stages)
    worker = stages[WORKER]
    (entrypoint,) = in_stage(worker, "ENTRYPOINT")
    assert exec_form(entrypoint) == [BOOT]
    # No CMD: the runner passes the boot binary its arguments (--id, --provision_endpoint).
    assert not in_stage(worker, "CMD")
    # The boot binary (and Beam's licences beside it) come from Beam's own SDK image.
    assert stage_from("beam-sdk") == "${BEAM_SDK_IMAGE}"
    assert ({"from": "beam-sdk"}, ["/opt/apache/beam"], "/opt/apache/beam") in copies(worker)


def test_beam_sdk_image_is_the_pinned_beam_for_the_base_images_python():
    image = arg_defaults()["BEAM_SDK_IMAGE"]
    match = re.fullmatch(r"apache/beam_python(\d+\.\d+)_sdk:(.+)", image)
    assert match, image
    python, version = match.groups()
    assert version == pinned_beam()
    base_python = re.match(r"python:(\d+\.\d+)", arg_defaults()["PYTHON_IMAGE"]).group(1)
    assert python == base_python


def test_beam_worker_has_the_project_and_beam_in_the_servers_layout():
    stages = stage_names()
    worker = stages[WORKER]
    assert stage_from(WORKER) == "${PYTHON_IMAGE}"  # the venvs' python links into it
    assert stage_from("worker-builder") == "builder"
    worker_copies = copies(worker)
    assert ({"from": "torch"}, ["/opt/torch"], "/opt/torch") in worker_copies
    assert ({"from": "worker-builder"}, ["/opt/venv"], "/opt/venv") in worker_copies
    # Nothing of the build stages' CA certificates or source tree.
    assert {flags.get("from") for flags, _, _ in worker_copies} <= {
        "torch",
        "worker-builder",
        "beam-sdk",
    }
    # The builder's venv plus pipelines/ and the `pipelines` extra, torch kept as it is.
    builder = stages["worker-builder"]
    assert ({}, ["pipelines"], "./pipelines") in copies(builder)
    (run,) = in_stage(builder, "RUN")
    assert re.search(
        r'pip install --constraint /tmp/torch-constraints\.txt "\.\[pipelines\]"', run.args
    )
    assert "import apache_beam, pipelines.ingest.pipeline" in run.args
    assert "pipelines/ingest/pipeline.py" in build_context()


def test_beam_worker_runs_the_venvs_python_as_the_servers_user():
    worker = stage_names()[WORKER]
    env = image_env(worker)
    # The boot binary runs `python` from PATH: the venv's, which has Beam and the project.
    assert env["PATH"].split(":")[0] == "/opt/venv/bin"
    # Else boot makes a venv under /opt/apache, which the non-root user cannot write.
    assert env["RUN_PYTHON_SDK_IN_DEFAULT_ENVIRONMENT"] == "1"
    (user,) = in_stage(worker, "USER")
    (server_user,) = in_stage(FINAL_STAGE, "USER")
    assert user.args == server_user.args and user.args.split(":")[0] not in ("0", "root")
    assert any("useradd" in i.args and "--uid 10001" in i.args for i in in_stage(worker, "RUN"))


def test_server_stays_the_default_target_and_shares_torchs_layer_with_the_worker():
    stages = stage_names()
    assert stages["runtime"] == FINAL_STAGE
    assert max(stages[WORKER], stages["worker-builder"], stages["beam-sdk"]) < FINAL_STAGE

    def up_to_torch(stage: int) -> list[tuple[str, str]]:
        body = [(i.keyword, i.args) for i in in_stage(stage) if i.keyword != "FROM"]
        return body[: body.index(("COPY", "--from=torch /opt/torch /opt/torch")) + 1]

    # Same base, same commands in the same order, up to torch's COPY: the builders reuse
    # those layers for the second image, and one host keeps torch's gigabytes once.
    assert up_to_torch(stages[WORKER]) == up_to_torch(FINAL_STAGE)
    assert [k for k, _ in up_to_torch(FINAL_STAGE)] == ["RUN", "COPY"]
