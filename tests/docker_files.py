"""Parsing helpers shared by the static container tests (docker/, .dockerignore).

`make test` needs no Docker, so these tests build nothing (`make docker-test` builds and
runs the image and the stack for real: tests/containers/). Instead the files are parsed
here: the Dockerfile into instructions per stage, the compose files as Compose reads and
merges them, .dockerignore with Docker's matching rules; alongside, the server facts they
are checked against (its routes, its settings table, docs/server.md's table) and a fake
program that records how it was called.
"""

from __future__ import annotations

import json
import os
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import yaml

from ib_vectorizer.serving.engine import BatchingEngine
from ib_vectorizer.serving.http import create_app
from ib_vectorizer.serving.metrics import ServerMetrics
from ib_vectorizer.serving.settings import SETTINGS, ServerSettings

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
    return in_stage(FINAL_STAGE, keyword)


def in_stage(stage: int, keyword: str | None = None) -> list[Instruction]:
    """A stage's instructions (of one keyword, if given), in order."""
    return [
        i for i in INSTRUCTIONS if i.stage == stage and (keyword is None or i.keyword == keyword)
    ]


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


def image_env(stage: int | None = None) -> dict[str, str]:
    """A stage's ENV (the final one's by default), as the container sees it.

    Only the ``KEY=VALUE`` form; ``$NAME`` in a value is left as written.
    """
    env: dict[str, str] = {}
    for i in in_stage(FINAL_STAGE if stage is None else stage, "ENV"):
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


def run_commands() -> list[Instruction]:
    return [i for i in INSTRUCTIONS if i.keyword == "RUN"]


def shell_of(run: Instruction) -> str:
    """The command `RUN [--mount=...] command` hands to /bin/sh -c."""
    _, words = split_flags(run.args)
    return run.args[run.args.index(words[0]) :] if words else ""


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


def documented_configuration() -> str:
    """The server's configuration table, as docs/server.md documents it."""
    reference = (ROOT / "docs" / "server.md").read_text()
    section = reference.split("## Configuration", 1)[1]
    return section.split("\n## ", 1)[0]


def documented_variables() -> set[str]:
    return set(re.findall(r"^\| `([A-Z][A-Z0-9_]*)` \|", documented_configuration(), re.MULTILINE))


KNOWN_VARIABLES = {s.env for s in SETTINGS} | {"IB_LOG_LEVEL"}


def server_variables(env: dict[str, str]) -> set[str]:
    return {n for n in env if n.startswith("IB_") or n in ("ENABLE_CUDA", "CUDA_CORE")}


# --------------------------------------------------------------------------- fake programs

# A stand-in for ib-vectorizer (or pip), formatted with the Python to run it: it appends its
# name, pid and argv to $FAKE_LOG as one JSON line; `download` writes a small file at
# --output (else $FAKE_DEFAULT), or exits 3 when $FAKE_DOWNLOAD_FAILS is set.
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


# --------------------------------------------------------------------------- .dockerignore


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
