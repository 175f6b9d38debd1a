"""docker/Dockerfile: what the image is made of and how it starts.

A multi-stage build whose final stage runs the server as non-root on port 8080, behind
docker/entrypoint.sh; torch pinned as in pyproject and installed from the index the
VARIANT asks for; a health check on the server's ready route; the weights in a volume
(baked into it on request); and only ENV the server accepts and docs/server.md documents.
Nothing is built here (tests/containers/ builds and runs it: `make docker-test`): the file
is parsed, its RUN commands are checked by /bin/sh and the torch install is run with a fake
pip.
"""

from __future__ import annotations

import ast
import inspect
import json
import re
import subprocess
import sys
import tomllib
from pathlib import PurePosixPath

import pytest

from ib_vectorizer.checkpoints import DEFAULT_WEIGHTS, WEIGHTS, ensure_downloaded
from ib_vectorizer.serving.settings import SETTINGS

from .docker_files import (
    DOCKERFILE,
    FAKE,
    FINAL_STAGE,
    INSTRUCTIONS,
    KNOWN_VARIABLES,
    READY,
    ROOT,
    arg_defaults,
    copies,
    documented_configuration,
    documented_variables,
    duration_s,
    exec_form,
    final,
    healthcheck,
    image_env,
    parse_dockerfile,
    run_commands,
    server_routes,
    server_variables,
    shell_of,
    split_flags,
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
    assert {"build-base", "torch", "builder", "weights", "runtime"} <= set(stages)
    assert stages["runtime"] == FINAL_STAGE
    froms = {i.stage: i.args.split()[0] for i in INSTRUCTIONS if i.keyword == "FROM"}
    # The venv's python is a symlink into the base image: the final stage must be the same one.
    assert froms[FINAL_STAGE] == froms[stages["build-base"]] == "${PYTHON_IMAGE}"
    assert froms[stages["torch"]] == froms[stages["weights"]] == "build-base"
    assert froms[stages["builder"]] == "torch"
    # torch's virtualenv first (its layer is reused while torch is), then the project's.
    final_copies = copies(FINAL_STAGE)
    torch_copy = final_copies.index(({"from": "torch"}, ["/opt/torch"], "/opt/torch"))
    assert final_copies.index(({"from": "builder"}, ["/opt/venv"], "/opt/venv")) > torch_copy
    builder_runs = [
        i.args for i in INSTRUCTIONS if i.keyword == "RUN" and i.stage == stages["builder"]
    ]
    assert any(re.search(r"\bpip install\b.* \.($| )", run) for run in builder_runs)
    # The base image's Python satisfies pyproject's requires-python.
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    python = re.match(r"python:(\d+)\.(\d+)", arg_defaults()["PYTHON_IMAGE"]).groups()
    required = re.match(r">=(\d+)\.(\d+)", project["requires-python"]).groups()
    assert tuple(map(int, python)) >= tuple(map(int, required))


def test_dockerfile_builds_with_and_without_buildkit():
    """Nothing only BuildKit reads, and no `# syntax=` line (BuildKit would pull a frontend)."""
    text = DOCKERFILE.read_text()
    assert not re.search(r"^#\s*syntax\s*=", text, re.MULTILINE | re.IGNORECASE)
    for instruction in INSTRUCTIONS:
        flags, _ = split_flags(instruction.args)
        if instruction.keyword == "RUN":
            assert not flags, f"RUN {flags}: the classic builder has no RUN flags"
            assert "<<" not in instruction.args, "heredocs need BuildKit"
        if instruction.keyword in ("COPY", "ADD"):
            assert set(flags) <= {"from", "chown"}, f"{instruction.keyword} {flags}"


def test_extra_ca_certificates_reach_the_build_stages_only():
    stages = stage_names()
    declared = {i.stage for i in INSTRUCTIONS if i.keyword == "ARG" and "EXTRA_CA_CERTS" in i.args}
    assert declared == {stages["build-base"]}
    (run,) = [i for i in run_commands() if i.stage == stages["build-base"]]
    assert "EXTRA_CA_CERTS" in run.args and "/etc/pip.conf" in run.args
    # The final stage starts again from the base image: none of it is there.
    assert not any("EXTRA_CA_CERTS" in i.args for i in INSTRUCTIONS if i.stage == FINAL_STAGE)
    assert not any(f.get("from") == "build-base" for f, _, _ in copies(FINAL_STAGE))


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
    # `python -m venv DIR` makes DIR/bin/pip the fake pip; the venv goes under tmp_path.
    fake_python = tmp_path / "python"
    fake_python.write_text(
        f'#!/bin/sh\n[ "$1 $2" = "-m venv" ] && mkdir -p "$3/bin" && cp {fake_pip} "$3/bin/pip"\n'
    )
    fake_python.chmod(0o755)
    log = tmp_path / "calls.jsonl"
    versions = {k: v for k, v in arg_defaults().items() if k.endswith("_VERSION")}
    env = {"PATH": f"{tmp_path}:/usr/bin:/bin", "FAKE_LOG": str(log), **versions, **build_args}
    command = shell_of(run).replace("/opt/torch", str(tmp_path / "torch"))
    result = subprocess.run(["/bin/sh", "-c", command], env=env, capture_output=True)
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
    # The entrypoint is docker/entrypoint.sh, made executable in the builder (COPY --chmod
    # needs BuildKit) and copied from there into a directory on PATH.
    builder = stage_names()["builder"]
    (destination,) = [d for _, s, d in copies(builder) if s == ["docker/entrypoint.sh"]]
    assert any(f"chmod 0755 {destination}" in i.args for i in run_commands() if i.stage == builder)
    assert ({"from": "builder"}, [destination], destination) in copies(FINAL_STAGE)
    assert PurePosixPath(destination).name == program
    assert str(PurePosixPath(destination).parent) in ("/usr/local/bin", "/usr/bin", "/bin")


def test_dockerfile_healthcheck_asks_ready_with_python():
    flags, command = healthcheck()
    assert command[:2] == ["python", "-c"] and READY in command[2]
    assert ("GET", READY) in server_routes()
    # Long enough for the first start's download plus loading.
    assert duration_s(flags["start-period"]) >= 10 * 60
    assert duration_s(flags["timeout"]) < duration_s(flags["interval"])


def test_dockerfile_env_names_are_documented_server_settings():
    names = server_variables(image_env())
    assert {"IB_HOST", "IB_PORT", "IB_CHECKPOINT"} <= names
    documented = documented_variables()
    assert "IB_PORT" in documented and len(documented) == len(SETTINGS)
    for name in names:
        assert name in KNOWN_VARIABLES, name
        assert name in documented or f"`{name}`" in documented_configuration(), name


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
    # BAKE_WEIGHTS=1 downloads with the project's downloader to IB_CHECKPOINT, in a stage
    # that holds only the downloader's modules (so a code change does not fetch it again).
    assert arg_defaults()["BAKE_WEIGHTS"] == "0"
    weights_stage = stage_names()["weights"]
    (run,) = [i.args for i in INSTRUCTIONS if i.keyword == "RUN" and i.stage == weights_stage]
    code = re.search(r"python -c '([^']*)'", run).group(1)
    calls = [n for n in ast.walk(ast.parse(code)) if isinstance(n, ast.Call)]
    (call,) = [c for c in calls if getattr(c.func, "id", None) == "ensure_downloaded"]
    dest = next(k.value.value for k in call.keywords if k.arg == "dest")
    assert dest == str(checkpoint)
    assert set(inspect.signature(ensure_downloaded).parameters) >= {k.arg for k in call.keywords}
    (copied,) = copies(weights_stage)
    modules = {PurePosixPath(source).stem for source in copied[1]}
    assert modules == {"checkpoints", "retry"}
    for module in modules:
        tree = ast.parse((ROOT / "ib_vectorizer" / f"{module}.py").read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level:
                assert node.module in modules, f"{module}.py imports .{node.module}"
            elif isinstance(node, ast.Import | ast.ImportFrom):
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                else:
                    names = [node.module]
                for name in names:
                    top = name.split(".")[0]
                    assert top in sys.stdlib_module_names or top == "tqdm", f"{module}: {name}"
    assert '"tqdm' in run


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
