"""docker/Dockerfile: what the image is made of and how it starts.

A multi-stage build whose final stage runs the server as non-root on port 8080, behind
docker/entrypoint.sh; torch pinned as in pyproject and installed from the index the
VARIANT asks for; a health check on the server's ready route; the weights in a volume
(baked into it on request); and only ENV the server accepts and the README documents.
Nothing is built: the file is parsed, its RUN commands are checked by /bin/sh and the
torch install is run with a fake pip.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import PurePosixPath

import pytest

from ib_vectorizer.checkpoints import DEFAULT_WEIGHTS, WEIGHTS
from ib_vectorizer.cli import build_parser
from ib_vectorizer.serving.settings import SETTINGS

from .docker_files import (
    FAKE,
    FINAL_STAGE,
    INSTRUCTIONS,
    KNOWN_VARIABLES,
    READY,
    ROOT,
    arg_defaults,
    copies,
    duration_s,
    exec_form,
    final,
    healthcheck,
    image_env,
    parse_dockerfile,
    readme_configuration,
    readme_variables,
    run_commands,
    server_routes,
    server_variables,
    shell_of,
    stage_names,
)


def test_dockerfile_parser_joins_continuations_and_drops_comments():
    parsed = parse_dockerfile(
        "# syntax=docker/dockerfile:1\nARG A=1\nFROM x AS b\nRUN one \\\n    # note\n"
        "    two\nFROM y\nENV K=v\n"
    )
    assert [(i.keyword, i.args, i.stage) for i in parsed] == [
        ("ARG", "A=1", -1),
        ("FROM", "x AS b", 0),
        ("RUN", "one two", 0),
        ("FROM", "y", 1),
        ("ENV", "K=v", 1),
    ]


def test_dockerfile_is_multi_stage_with_the_venv_copied_into_a_fresh_base():
    stages = stage_names()
    assert {"builder", "weights", "runtime"} <= set(stages)
    assert stages["runtime"] == FINAL_STAGE
    froms = {i.stage: i.args.split()[0] for i in INSTRUCTIONS if i.keyword == "FROM"}
    # The venv's python is a symlink into the base image: the final stage must be the same one.
    assert froms[FINAL_STAGE] == froms[stages["builder"]] == "${PYTHON_IMAGE}"
    assert ({"from": "builder"}, ["/opt/venv"], "/opt/venv") in copies(FINAL_STAGE)
    builder_runs = [
        i.args for i in INSTRUCTIONS if i.keyword == "RUN" and i.stage == stages["builder"]
    ]
    assert any(re.search(r"\bpip install\b.* \.($| )", run) for run in builder_runs)
    # The base image's Python satisfies pyproject's requires-python.
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    python = re.match(r"python:(\d+)\.(\d+)", arg_defaults()["PYTHON_IMAGE"]).groups()
    required = re.match(r">=(\d+)\.(\d+)", project["requires-python"]).groups()
    assert tuple(map(int, python)) >= tuple(map(int, required))


def test_dockerfile_torch_pins_match_pyproject():
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    pins = dict(d.split("==") for d in deps if "==" in d)
    args = arg_defaults()
    for package in ("torch", "torchvision", "torchaudio"):
        assert args[f"{package.upper()}_VERSION"] == pins[package], package


def test_dockerfile_run_commands_and_healthcheck_are_valid():
    for run in run_commands():
        result = subprocess.run(["/bin/sh", "-n", "-c", shell_of(run)], capture_output=True)
        assert result.returncode == 0, (run.args, result.stderr)
    _, command = healthcheck()
    compile(command[2], "HEALTHCHECK", "exec")


@pytest.mark.parametrize(
    ("build_args", "index"),
    [
        ({"VARIANT": "cuda"}, "https://pypi.org/simple"),
        ({"VARIANT": "cpu"}, "https://download.pytorch.org/whl/cpu"),
        ({"VARIANT": "cuda", "TORCH_INDEX_URL": "https://mirror/cu126"}, "https://mirror/cu126"),
        ({"VARIANT": "rocm"}, None),
    ],
)
def test_dockerfile_torch_install_follows_the_variant(tmp_path, build_args, index):
    """The builder's torch RUN, executed with a fake pip that records its arguments."""
    (run,) = [i for i in run_commands() if '"$VARIANT"' in i.args]
    fake_pip = tmp_path / "pip"
    fake_pip.write_text(FAKE.format(python=sys.executable))
    fake_pip.chmod(0o755)
    log = tmp_path / "calls.jsonl"
    versions = {k: v for k, v in arg_defaults().items() if k.endswith("_VERSION")}
    env = {"PATH": f"{tmp_path}:/usr/bin:/bin", "FAKE_LOG": str(log), **versions, **build_args}
    result = subprocess.run(["/bin/sh", "-c", shell_of(run)], env=env, capture_output=True)
    if index is None:
        assert result.returncode != 0 and not log.exists()  # fails before installing anything
        assert b"VARIANT must be cuda or cpu" in result.stderr
        return
    assert result.returncode == 0, result.stderr
    pins = [
        f"{p}=={versions[p.upper() + '_VERSION']}" for p in ("torch", "torchvision", "torchaudio")
    ]
    calls = [json.loads(line)["argv"] for line in log.read_text().splitlines()]
    assert calls == [["install", "--index-url", index, *pins]]


def test_dockerfile_runs_the_server_as_non_root_on_port_8080():
    env = image_env()
    (user,) = final("USER")
    uid = user.args.split(":")[0]
    assert uid not in ("root", "0") and uid.isdigit()
    exposed = {word.split("/")[0] for i in final("EXPOSE") for word in i.args.split()}
    assert exposed == {env["IB_PORT"]} == {"8080"}
    assert env["IB_HOST"] == "0.0.0.0"
    (cmd,) = final("CMD")
    assert exec_form(cmd) == ["ib-vectorizer", "serve"]
    (entrypoint,) = final("ENTRYPOINT")
    (program,) = exec_form(entrypoint)
    # The entrypoint is docker/entrypoint.sh, installed executable into a directory on PATH.
    installed = [(f, d) for f, s, d in copies(FINAL_STAGE) if s == ["docker/entrypoint.sh"]]
    assert len(installed) == 1
    flags, destination = installed[0]
    assert flags.get("chmod") == "0755"
    assert PurePosixPath(destination).name == program
    assert str(PurePosixPath(destination).parent) in ("/usr/local/bin", "/usr/bin", "/bin")


def test_dockerfile_healthcheck_asks_ready_with_python():
    flags, command = healthcheck()
    assert command[:2] == ["python", "-c"] and READY in command[2]
    assert ("GET", READY) in server_routes()
    # Long enough for the first start's download plus loading.
    assert duration_s(flags["start-period"]) >= 10 * 60
    assert duration_s(flags["timeout"]) < duration_s(flags["interval"])


def test_dockerfile_env_names_are_server_settings_documented_in_readme():
    names = server_variables(image_env())
    assert {"IB_HOST", "IB_PORT", "IB_CHECKPOINT"} <= names
    documented = readme_variables()
    assert "IB_PORT" in documented and len(documented) == len(SETTINGS)
    for name in names:
        assert name in KNOWN_VARIABLES, name
        assert name in documented or f"`{name}`" in readme_configuration(), name


def test_weights_live_in_the_volume_and_baking_writes_there():
    env = image_env()
    checkpoint = PurePosixPath(env["IB_CHECKPOINT"])
    assert checkpoint.name == WEIGHTS[DEFAULT_WEIGHTS].filename
    (volume,) = final("VOLUME")
    assert json.loads(volume.args) == [str(checkpoint.parent)]
    # The (possibly baked) /models is copied, owned by the user, before VOLUME declares it.
    (copy,) = [i for i in final("COPY") if "--from=weights" in i.args]
    flags, sources, destination = copies(FINAL_STAGE)[final("COPY").index(copy)]
    assert sources == [str(checkpoint.parent)] and destination == str(checkpoint.parent)
    user = final("USER")[0].args
    assert flags["chown"] == user
    assert INSTRUCTIONS.index(copy) < INSTRUCTIONS.index(volume)
    # The directory itself belongs to the user too (the entrypoint downloads into it).
    uid, gid = user.split(":")
    assert any(f"install -d -o {uid} -g {gid} {checkpoint.parent}" in i.args for i in final("RUN"))
    # BAKE_WEIGHTS=1 runs `ib-vectorizer download` and puts the file at IB_CHECKPOINT.
    assert arg_defaults()["BAKE_WEIGHTS"] == "0"
    weights_stage = stage_names()["weights"]
    (run,) = [i.args for i in INSTRUCTIONS if i.keyword == "RUN" and i.stage == weights_stage]
    assert str(checkpoint) in run
    download = re.search(r"ib-vectorizer (download [^&;]*)", run).group(1)
    args = build_parser().parse_args(shlex.split(download))  # the real CLI accepts it
    assert args.run.__name__ == "run_download"
    assert args.output.name == checkpoint.name


def test_serve_help_runs_and_names_the_image_variables():
    result = subprocess.run(
        [sys.executable, "-m", "ib_vectorizer", "serve", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    help_text = " ".join(result.stdout.split())  # argparse wraps lines
    for name in server_variables(image_env()):
        assert f"(env {name})" in help_text, name
