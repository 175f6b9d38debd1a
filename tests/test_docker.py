"""The container deliverables: docker/Dockerfile, the compose files, .dockerignore, the entrypoint.

There is no Docker engine in the test environment, so nothing is built. Instead the files
are parsed and their wiring is checked against the server itself (its routes, its settings
table, its CLI); the health-check commands are run against a live server; the entrypoint
script is run for real with a fake ``ib-vectorizer`` first on PATH; and .dockerignore is
applied to this checkout with Docker's matching rules.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import subprocess
import sys
import tomllib
import urllib.parse
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import pytest
import yaml
from aiohttp.test_utils import TestServer

from ib_vectorizer.checkpoints import DEFAULT_WEIGHTS, WEIGHTS
from ib_vectorizer.cli import build_parser
from ib_vectorizer.serving.engine import BatchingEngine
from ib_vectorizer.serving.http import create_app
from ib_vectorizer.serving.metrics import ServerMetrics
from ib_vectorizer.serving.server import DRAIN_TIMEOUT_S
from ib_vectorizer.serving.settings import SETTINGS, ServerSettings, settings_from

ROOT = Path(__file__).resolve().parent.parent
DOCKER = ROOT / "docker"
DOCKERFILE = DOCKER / "Dockerfile"
ENTRYPOINT = DOCKER / "entrypoint.sh"
SERVICE = "ib-vectorizer"
WEAVIATE = "weaviate"
READY = "/.well-known/ready"

# --------------------------------------------------------------------------- Dockerfile


@dataclass(frozen=True)
class Instruction:
    keyword: str
    args: str
    stage: int  # -1 before the first FROM (global ARGs)


def parse_dockerfile(text: str) -> list[Instruction]:
    """Instructions with ``\\`` continuations joined; comment lines (also inside them) dropped."""
    instructions: list[Instruction] = []
    stage = -1
    pending = ""
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1].rstrip() + " "
            continue
        keyword, _, args = (pending + stripped).partition(" ")
        pending = ""
        if keyword.upper() == "FROM":
            stage += 1
        instructions.append(Instruction(keyword.upper(), args.strip(), stage))
    assert not pending, "the Dockerfile ends inside a line continuation"
    return instructions


INSTRUCTIONS = parse_dockerfile(DOCKERFILE.read_text())
FINAL_STAGE = max(i.stage for i in INSTRUCTIONS)


def final(keyword: str) -> list[Instruction]:
    return [i for i in INSTRUCTIONS if i.keyword == keyword and i.stage == FINAL_STAGE]


def stage_names() -> dict[str, int]:
    names = {}
    for i in INSTRUCTIONS:
        if i.keyword == "FROM":
            parts = i.args.split()
            if len(parts) == 3 and parts[1].upper() == "AS":
                names[parts[2]] = i.stage
    return names


def split_flags(args: str) -> tuple[dict[str, str], list[str]]:
    """``--name=value`` options before the rest of an instruction's words."""
    words = shlex.split(args)
    flags = {}
    while words and words[0].startswith("--"):
        name, _, value = words.pop(0)[2:].partition("=")
        flags[name] = value
    return flags, words


def arg_defaults() -> dict[str, str]:
    defaults = {}
    for i in INSTRUCTIONS:
        if i.keyword == "ARG" and "=" in i.args:
            name, _, value = i.args.partition("=")
            defaults.setdefault(name, value)
    return defaults


def image_env() -> dict[str, str]:
    """The final stage's ENV, as the container sees it (``KEY=VALUE`` form only)."""
    env: dict[str, str] = {}
    for i in final("ENV"):
        for word in shlex.split(i.args):
            name, sep, value = word.partition("=")
            assert sep, f"ENV {i.args!r}: use the KEY=VALUE form"
            env[name] = value
    return env


def exec_form(instruction: Instruction) -> list[str]:
    assert instruction.args.startswith("["), f"{instruction.keyword} should use the exec form"
    return json.loads(instruction.args)


def healthcheck() -> tuple[dict[str, str], list[str]]:
    (check,) = final("HEALTHCHECK")
    options, rest = check.args.split(" CMD ", 1)
    flags, _ = split_flags(options)
    return flags, json.loads(rest)


def copies(stage: int | None = None) -> list[tuple[dict[str, str], list[str], str]]:
    """(flags, sources, destination) of every COPY (of one stage, if given)."""
    out = []
    for i in INSTRUCTIONS:
        if i.keyword == "COPY" and (stage is None or i.stage == stage):
            flags, words = split_flags(i.args)
            out.append((flags, words[:-1], words[-1]))
    return out


def duration_s(value: str) -> float:
    """A Docker/Compose duration (``20m``, ``1m30s``, ``75s``) in seconds."""
    units = {"h": 3600, "m": 60, "s": 1, "ms": 1e-3}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", value)
    assert parts and "".join(n + u for n, u in parts) == value, f"not a duration: {value!r}"
    return sum(float(n) * units[u] for n, u in parts)


# --------------------------------------------------------------------------- compose files


class _Reset:
    def __repr__(self) -> str:
        return "!reset"


RESET = _Reset()


class ComposeLoader(yaml.SafeLoader):
    """YAML as Compose reads it: ``!reset`` is a tag (any other unknown tag is an error)."""


ComposeLoader.add_constructor("!reset", lambda loader, node: RESET)

# Lists Compose replaces instead of appending, and lists merged by a unique key.
_REPLACED = {("command",), ("entrypoint",), ("healthcheck", "test")}
_UNIQUE_KEYED = {"ports", "volumes", "secrets", "configs"}


def merge(base, override, path: tuple[str, ...] = ()):
    """Compose's merge of an override file into a base file (docs: compose-spec 13-merge.md).

    Mappings merge key by key, scalars are replaced, lists are appended, except
    command/entrypoint/healthcheck.test (replaced) and ports/volumes/secrets/configs
    (merged by a unique key: not implemented, so an override using them fails loudly here);
    ``!reset`` removes the key.
    """
    if isinstance(base, dict) and isinstance(override, dict):
        merged = dict(base)
        for key, value in override.items():
            if value is RESET:
                merged.pop(key, None)
            else:
                merged[key] = merge(merged[key], value, (*path, key)) if key in merged else value
        return merged
    if isinstance(base, list) and isinstance(override, list):
        if any(path[-len(p) :] == p for p in _REPLACED):
            return override
        if path[-1] in _UNIQUE_KEYED:
            raise NotImplementedError(f"merging {'.'.join(path)} needs its unique-key rule")
        return base + override
    return override


def load_compose(name: str) -> dict:
    return yaml.load((DOCKER / name).read_text(), Loader=ComposeLoader)


BASE = load_compose("docker-compose.yml")
CPU = load_compose("docker-compose.cpu.yml")
MERGED_CPU = merge(BASE, CPU)


def published_ports(service: dict) -> set[tuple[int, int]]:
    """(host, container) pairs from short (``"8080:8080"``) or long syntax."""
    pairs = set()
    for port in service.get("ports", []):
        if isinstance(port, dict):
            pairs.add((int(port["published"]), int(port["target"])))
        else:
            assert isinstance(port, str), f"quote port {port!r}: YAML may read a:b as a number"
            *_, host, container = port.split(":")
            pairs.add((int(host), int(container.split("/")[0])))
    return pairs


def mounts(service: dict) -> dict[str, str]:
    """Container path → volume name (or host path) of a service's volumes."""
    out = {}
    for volume in service.get("volumes", []):
        if isinstance(volume, dict):
            out[volume["target"]] = volume["source"]
        else:
            source, target, *_ = volume.split(":")
            out[target] = source
    return out


def gpu_devices(service: dict) -> list[dict]:
    reservations = service.get("deploy", {}).get("resources", {}).get("reservations", {})
    return [d for d in reservations.get("devices") or [] if "gpu" in d.get("capabilities", [])]


def container_env(compose: dict) -> dict[str, str]:
    """What our container's process sees: the image's ENV, then the compose service's."""
    environment = compose["services"][SERVICE]["environment"]
    assert isinstance(environment, dict), "keep environment a mapping (merged key by key)"
    for name, value in environment.items():
        assert isinstance(value, str), f"{name}: quote the value ({value!r})"
    return {**image_env(), **environment}


# --------------------------------------------------------------------------- the server


def server_routes() -> set[tuple[str, str]]:
    engine = BatchingEngine(ServerSettings(), ServerMetrics())  # nothing is loaded
    try:
        app = create_app(engine)
        return {(r.method, r.resource.canonical) for r in app.router.routes()}
    finally:
        engine.close()


def readme_configuration() -> str:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("### Configuration", 1)[1]
    return section.split("\n## ", 1)[0]


def readme_variables() -> set[str]:
    return set(re.findall(r"^\| `([A-Z][A-Z0-9_]*)` \|", readme_configuration(), re.MULTILINE))


KNOWN_VARIABLES = {s.env for s in SETTINGS} | {"IB_LOG_LEVEL"}


def server_variables(env: dict[str, str]) -> set[str]:
    return {n for n in env if n.startswith("IB_") or n in ("ENABLE_CUDA", "CUDA_CORE")}


# =========================================================================== tests: Dockerfile


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


def run_commands() -> list[Instruction]:
    return [i for i in INSTRUCTIONS if i.keyword == "RUN"]


def shell_of(run: Instruction) -> str:
    """The command `RUN [--mount=...] command` hands to /bin/sh -c."""
    _, words = split_flags(run.args)
    return run.args[run.args.index(words[0]) :] if words else ""


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


def test_compose_variants_are_ones_the_dockerfile_knows():
    (run,) = [i.args for i in run_commands() if '"$VARIANT"' in i.args]
    labels = set(re.findall(r"(\w+)\) index=", run))
    assert arg_defaults()["VARIANT"] in labels
    for compose in (BASE, MERGED_CPU):
        assert compose["services"][SERVICE]["build"]["args"]["VARIANT"] in labels


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


# =========================================================================== tests: compose


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


def test_compose_env_names_are_server_settings_documented_in_readme():
    documented = readme_variables()
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
    without_reset = merge(BASE, yaml.safe_load((DOCKER / "docker-compose.cpu.yml").read_text()
                                               .replace("!reset ", "")))  # fmt: skip
    assert gpu_devices(without_reset["services"][SERVICE]) != []


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


# =========================================================================== tests: entrypoint

FAKE = """#!{python}
import json, os, sys
from pathlib import Path

argv = sys.argv[1:]
with open(os.environ["FAKE_LOG"], "a") as log:
    log.write(json.dumps({{"name": Path(sys.argv[0]).name, "pid": os.getpid(), "argv": argv}}))
    log.write("\\n")
if argv[:1] == ["download"]:
    if os.environ.get("FAKE_DOWNLOAD_FAILS"):
        sys.exit(3)
    out = argv[argv.index("--output") + 1] if "--output" in argv else os.environ["FAKE_DEFAULT"]
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_bytes(b"weights")
"""


@dataclass
class Run:
    returncode: int
    pid: int
    calls: list[dict]
    stderr: str


@pytest.fixture
def entrypoint(tmp_path):
    """Run docker/entrypoint.sh with a fake ib-vectorizer (and a fake `other`) on PATH."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("ib-vectorizer", "other"):
        fake = bin_dir / name
        fake.write_text(FAKE.format(python=sys.executable))
        fake.chmod(0o755)
    log = tmp_path / "calls.jsonl"
    models = tmp_path / "models"
    models.mkdir()

    def run(*args: str, **env: str) -> Run:
        log.write_text("")
        environment = {
            "PATH": f"{bin_dir}:/usr/bin:/bin",
            "HOME": str(tmp_path),
            "FAKE_LOG": str(log),
            "FAKE_DEFAULT": str(tmp_path / "cache" / "imagebind_huge.pth"),
            "IB_CHECKPOINT": str(models / "imagebind_huge.pth"),
            **env,
        }
        process = subprocess.Popen(
            ["/bin/sh", str(ENTRYPOINT), *args],
            env=environment,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        _, stderr = process.communicate(timeout=30)
        calls = [json.loads(line) for line in log.read_text().splitlines()]
        return Run(process.returncode, process.pid, calls, stderr)

    run.models = models
    return run


def argvs(run: Run) -> list[list[str]]:
    return [[call["name"], *call["argv"]] for call in run.calls]


def test_entrypoint_is_valid_posix_sh():
    assert ENTRYPOINT.read_text().startswith("#!/bin/sh\n")
    for shell in ("bash", "/bin/sh"):  # /bin/sh is dash here, as in the Debian-based image
        result = subprocess.run([shell, "-n", str(ENTRYPOINT)], capture_output=True, text=True)
        assert result.returncode == 0, result.stderr


def test_entrypoint_downloads_missing_weights_once_then_execs_serve(entrypoint):
    weights = entrypoint.models / "imagebind_huge.pth"
    first = entrypoint("ib-vectorizer", "serve")
    assert first.returncode == 0, first.stderr
    assert argvs(first) == [
        ["ib-vectorizer", "download", "--quiet", "--output", str(weights)],
        ["ib-vectorizer", "serve"],
    ]
    download, serve = first.calls
    assert download["pid"] != first.pid  # a child ...
    assert serve["pid"] == first.pid  # ... then exec: the server replaces the shell
    assert weights.read_bytes() == b"weights"
    assert "CC-BY-NC-SA" in first.stderr
    # The real CLI accepts what the entrypoint passes to download.
    parsed = build_parser().parse_args(download["argv"])
    assert parsed.output == weights and parsed.quiet
    # Second start: the weights are there, nothing is downloaded.
    second = entrypoint("ib-vectorizer", "serve")
    assert argvs(second) == [["ib-vectorizer", "serve"]]
    assert second.calls[0]["pid"] == second.pid


def test_entrypoint_never_downloads_present_weights(entrypoint):
    (entrypoint.models / "imagebind_huge.pth").write_bytes(b"mine")
    for args in (("ib-vectorizer", "serve"), (), ("serve", "--max-batch", "64")):
        result = entrypoint(*args)
        assert result.returncode == 0, result.stderr
        assert [c["argv"][0] for c in result.calls] == ["serve"], args
    assert (entrypoint.models / "imagebind_huge.pth").read_bytes() == b"mine"


def test_entrypoint_follows_checkpoint_flags_and_random_weights(entrypoint, tmp_path):
    mine = tmp_path / "mine.pth"
    mine.write_bytes(b"mine")
    # --checkpoint wins over IB_CHECKPOINT (which is missing): nothing to fetch.
    result = entrypoint("ib-vectorizer", "serve", "--checkpoint", str(mine))
    assert argvs(result) == [["ib-vectorizer", "serve", "--checkpoint", str(mine)]]
    elsewhere = tmp_path / "elsewhere" / "w.pth"
    result = entrypoint("serve", f"--checkpoint={elsewhere}")
    assert argvs(result)[0] == ["ib-vectorizer", "download", "--quiet", "--output", str(elsewhere)]
    # Random weights need no checkpoint.
    for args, env in [
        (("ib-vectorizer", "serve"), {"IB_RANDOM_WEIGHTS": "True"}),
        (("serve", "--random-weights", "1"), {}),
        (("serve", "--random-weights=yes"), {}),
    ]:
        result = entrypoint(*args, **env)
        assert [c["argv"][0] for c in result.calls] == ["serve"], (args, env)
    # Random weights switched off: the checkpoint is needed again.
    result = entrypoint("serve", "--random-weights", "0")
    assert [c["argv"][0] for c in result.calls] == ["download", "serve"]


def test_entrypoint_without_a_checkpoint_path_fetches_the_default(entrypoint, tmp_path):
    result = entrypoint("ib-vectorizer", "serve", IB_CHECKPOINT="")
    assert argvs(result) == [
        ["ib-vectorizer", "download", "--quiet"],
        ["ib-vectorizer", "serve"],
    ]


def test_entrypoint_runs_other_commands_as_given(entrypoint):
    result = entrypoint("serve", "--help")
    assert argvs(result) == [["ib-vectorizer", "serve", "--help"]]  # no download for help
    result = entrypoint("embed", "--modality", "text", "--output", "o.npy", "a dog barking")
    assert argvs(result) == [
        ["ib-vectorizer", "embed", "--modality", "text", "--output", "o.npy", "a dog barking"]
    ]
    result = entrypoint("other", "serve", "x y")
    assert argvs(result) == [["other", "serve", "x y"]]
    assert result.calls[0]["pid"] == result.pid
    assert not (entrypoint.models / "imagebind_huge.pth").exists()


def test_entrypoint_stops_when_the_download_fails(entrypoint):
    result = entrypoint("ib-vectorizer", "serve", FAKE_DOWNLOAD_FAILS="1")
    assert result.returncode == 3
    assert [c["argv"][0] for c in result.calls] == ["download"]  # no server without weights


# =========================================================================== tests: .dockerignore


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    """Docker's .dockerignore pattern (moby/patternmatcher) as a regex over a relative path."""
    out = ""
    i = 0
    while i < len(pattern):
        char = pattern[i]
        if pattern.startswith("**", i):
            i += 2
            if pattern.startswith("/", i):
                i += 1
            out += ".*" if i >= len(pattern) else "(.*/)?"
            continue
        if char == "*":
            out += "[^/]*"
        elif char == "?":
            out += "[^/]"
        elif char == "[":
            end = pattern.index("]", i)
            out += pattern[i : end + 1]
            i = end
        else:
            out += re.escape(char)
        i += 1
    return re.compile(f"^{out}$")


def dockerignore() -> list[tuple[bool, re.Pattern[str], str]]:
    """(is an exception, regex, pattern) per line, in order."""
    rules = []
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        exception = line.startswith("!")
        pattern = os.path.normpath(line.lstrip("!").strip()).lstrip("/")
        rules.append((exception, _pattern_regex(pattern), pattern))
    return rules


RULES = dockerignore()


def excluded(path: str) -> bool:
    """Last matching rule wins; a rule matching a parent directory matches the path too."""
    parts = path.split("/")
    candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    result = False
    for exception, regex, _ in RULES:
        if any(regex.match(c) for c in candidates):
            result = not exception
    return result


def build_context() -> dict[str, int]:
    """The files of this checkout that `docker build .` would send, with their sizes."""
    files = {}
    for directory, dirnames, filenames in os.walk(ROOT):
        rel_dir = os.path.relpath(directory, ROOT)
        prefix = "" if rel_dir == "." else rel_dir + "/"
        # Skip an excluded directory unless an exception reaches inside it (as Docker does).
        dirnames[:] = [
            d
            for d in dirnames
            if not excluded(prefix + d)
            or any(exc and p.startswith(prefix + d + "/") for exc, _, p in RULES)
        ]
        for name in filenames:
            if not excluded(prefix + name):
                files[prefix + name] = os.path.getsize(os.path.join(directory, name))
    return files


def test_dockerignore_matcher_follows_docker_rules():
    anywhere = _pattern_regex("**/*.pth")
    assert anywhere.match("a/b/c.pth") and anywhere.match("c.pth") and not anywhere.match("c.pt")
    assert _pattern_regex("*").match("top") and not _pattern_regex("*").match("a/b")
    assert _pattern_regex("**/*.py[cod]").match("x/y.pyc")


@pytest.mark.parametrize(
    "path",
    [
        ".venv/bin/python",
        ".git/HEAD",
        "imagebind_huge.pth",
        "imagebind_huge.pth.part",
        "ib_vectorizer/model/imagebind_huge.pth",
        "tests/fixtures/imagebind-tiny/state_dict.pt",
        "tests/test_cli.py",
        "ib_vectorizer/__pycache__/cli.cpython-311.pyc",
        "ib_vectorizer.egg-info/PKG-INFO",
        "build/lib/ib_vectorizer/cli.py",
        "dist/ib_vectorizer-0.1.0-py3-none-any.whl",
        ".whl/torch-2.9.1.whl",
        ".gl/x",
        ".pytest_cache/v/cache",
        ".ruff_cache/x",
        "docker/Dockerfile",
    ],
)
def test_dockerignore_excludes(path):
    assert excluded(path)


def test_build_context_has_what_the_dockerfile_copies_and_little_else():
    context = build_context()
    sources = [s for flags, srcs, _ in copies() if "from" not in flags for s in srcs]
    assert "docker/entrypoint.sh" in sources and "pyproject.toml" in sources
    for source in sources:
        assert (ROOT / source).exists(), source
        assert source in context or any(f.startswith(source + "/") for f in context), source
    assert "ib_vectorizer/model/presets/imagebind_huge.json" in context  # package data
    assert "ib_vectorizer/cli.py" in context and "README.md" in context
    assert not [f for f in context if f.endswith((".pth", ".pt", ".pyc")) or "/tests/" in f]
    assert not [f for f in context if f.startswith(("tests/", ".venv/", ".git/"))]
    assert sum(context.values()) < 2_000_000, sorted(context)
