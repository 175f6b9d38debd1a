"""Provision the Go programs the project runs: Weaviate and Beam's Prism runner.

Both are Go modules, so where there is Go they are built from the Go module
proxy; Go's caches make a second build fast. ``make setup`` runs
``python -m pipelines.provision``.

Weaviate goes where weaviate-client's embedded mode finds it.

``weaviate.connect_to_embedded(version=V)`` runs
``<binary_path>/weaviate-v{V}-{sha256("v" + V)}`` and downloads a release
tarball only when that file is missing. ``make setup`` calls :func:`provision`,
which puts the binary there by the best route available:

1. our build is already there: nothing to do;
2. Go is installed: Weaviate's module source at the pinned version, from the Go
   module proxy, with :data:`LISTEN_ADDRESS_EDITS` applied, built with
   ``go build -trimpath ./cmd/weaviate-server`` (a copy of the module cache's
   tree, so the cache stays untouched; ``-trimpath`` keeps Go's build cache
   valid for any copy, so a rebuild takes seconds);
3. a binary is there already (say, a plain release): it is kept;
4. otherwise: download the release tarball for this OS and CPU.

Why the edit: Weaviate 1.38 opens its public gRPC API and its internal cluster
API (the data port) on every interface, with no setting to choose one. The
edit makes the first listen on ``$GRPC_BIND_ADDR`` and the second on
``$CLUSTER_BIND_ADDR`` (the address gossip and Raft already use); unset, both
listen everywhere as upstream does. Our build records itself in a file next to
the binary (:func:`has_listen_address_edits`); the local stack
(:mod:`pipelines.stack`) keeps every port on 127.0.0.1 with our build, and
turns on API-key authentication with any other.

Pinned version: 1.38.11, the newest release we test against. It ships the
``multi2vec-bind`` module and the named-vector API
(``Configure.Vectors.multi2vec_bind``) our collections use, and its ``go.mod``
builds with the Go 1.26 toolchain this project's machines have.

Prism (Beam's portable local runner) goes where ``--runner=PrismRunner``
looks before it downloads a release: Beam's binary cache, as the zip it would
have downloaded plus the unpacked binary.

Standard library only, so it runs before anything else is importable.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import platform
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

WEAVIATE_VERSION = "1.38.11"
WEAVIATE_MODULE = "github.com/weaviate/weaviate"
RELEASES = "https://github.com/weaviate/weaviate/releases/download"
PRISM_MODULE = "github.com/apache/beam/sdks/v2/go/cmd/prism"
PRISM_CACHE = Path.home() / ".apache_beam" / "cache" / "prism" / "bin"


class ProvisionError(RuntimeError):
    """No route to a Weaviate binary worked; the message says what to install."""


class SourceMismatch(ProvisionError):
    """Weaviate's source is not what our edit expects: the edit needs updating, not a fallback."""


@dataclass(frozen=True)
class SourceEdit:
    """Replace ``old`` (which must occur exactly once) with ``new`` in one file of the module."""

    path: str
    old: str
    new: str


# The public gRPC API and the cluster API listen on ":port" upstream (all interfaces).
LISTEN_ADDRESS_EDITS = (
    SourceEdit(
        "adapters/handlers/grpc/server.go",
        'lis, err := net.Listen("tcp", fmt.Sprintf(":%d",\n'
        "\t\tstate.ServerConfig.Config.GRPC.Port))",
        'lis, err := net.Listen("tcp", net.JoinHostPort(os.Getenv("GRPC_BIND_ADDR"),\n'
        "\t\tstrconv.Itoa(state.ServerConfig.Config.GRPC.Port)))",
    ),
    SourceEdit(
        "adapters/handlers/grpc/server.go",
        '\t"net"\n\t"strconv"\n',
        '\t"net"\n\t"os"\n\t"strconv"\n',
    ),
    SourceEdit(
        "adapters/handlers/rest/clusterapi/serve.go",
        'Addr:      fmt.Sprintf(":%d", port),',
        "Addr:      net.JoinHostPort(appState.ServerConfig.Config.Cluster.BindAddr, "
        "fmt.Sprint(port)),",
    ),
    SourceEdit(
        "adapters/handlers/rest/clusterapi/serve.go",
        '\t"fmt"\n\t"net/http"\n',
        '\t"fmt"\n\t"net"\n\t"net/http"\n',
    ),
)
# Names our build in the record next to the binary; change it whenever the edits change.
LISTEN_ADDRESS_BUILD = "listen-address-1"


def embedded_binary_dir(env: dict[str, str] | None = None) -> Path:
    """weaviate-client's default ``binary_path``.

    The client uses ``$XDG_CACHE_HOME`` itself (not a subfolder of it) when that
    is set, else ``~/.cache/weaviate-embedded``; we mirror it exactly.
    """
    env = os.environ if env is None else env
    if env.get("XDG_CACHE_HOME"):
        return Path(env["XDG_CACHE_HOME"])
    return Path.home() / ".cache" / "weaviate-embedded"


def embedded_binary_path(version: str = WEAVIATE_VERSION, directory: Path | None = None) -> Path:
    tag = f"v{version}"
    digest = hashlib.sha256(tag.encode("utf-8")).hexdigest()
    return (directory or embedded_binary_dir()) / f"weaviate-{tag}-{digest}"


def _go() -> str:
    go = shutil.which("go")
    if go is None:
        raise ProvisionError("Go is not installed")
    return go


def go_install(module: str, version: str, target: Path) -> None:
    """``go install module@vversion`` and move the program to ``target``."""
    go = _go()
    with tempfile.TemporaryDirectory(prefix="go-build-") as gobin:
        env = {**os.environ, "GOBIN": gobin}
        command = [go, "install", f"{module}@v{version}"]
        print(f"provision: {' '.join(command[1:])} ...", flush=True)
        result = subprocess.run(command, env=env, capture_output=True, text=True)
        if result.returncode != 0:
            raise ProvisionError(f"go install failed:\n{result.stderr[-3000:]}")
        _install(Path(gobin) / module.rsplit("/", 1)[1], target)


def apply_edits(tree: Path, edits: tuple[SourceEdit, ...] = LISTEN_ADDRESS_EDITS) -> None:
    """Edit a writable copy of Weaviate's source in place; fail if any edit does not fit."""
    for edit in edits:
        source = tree / edit.path
        text = source.read_text() if source.exists() else ""
        found = text.count(edit.old)
        if found != 1:
            raise SourceMismatch(
                f"{edit.path} has {found} copies of the code our listen-address edit replaces "
                f"(expected 1): update LISTEN_ADDRESS_EDITS in {__file__} for this Weaviate version"
            )
        source.write_text(text.replace(edit.old, edit.new))


def module_source(go: str, version: str, work: Path) -> Path:
    """Weaviate's module source at ``version``, fetched into Go's module cache if needed."""
    result = subprocess.run(
        [go, "mod", "download", "-json", f"{WEAVIATE_MODULE}@v{version}"],
        cwd=work,  # outside any module, so no go.mod around us decides anything
        env={**os.environ, "GOWORK": "off"},
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        raise ProvisionError(f"go mod download failed:\n{(result.stdout + result.stderr)[-3000:]}")
    return Path(json.loads(result.stdout)["Dir"])


def writable_copy(source: Path, target: Path) -> None:
    """Copy a tree from the module cache (read-only files and folders) as plain writable files."""
    for folder, _, files in os.walk(source):
        destination = target / Path(folder).relative_to(source)
        destination.mkdir(parents=True, exist_ok=True)
        for name in files:
            shutil.copyfile(Path(folder) / name, destination / name)


def build_with_go(version: str, target: Path) -> None:
    """Weaviate built from its module source with :data:`LISTEN_ADDRESS_EDITS` applied."""
    go = _go()
    with tempfile.TemporaryDirectory(prefix="weaviate-src-") as work:
        tree = Path(work) / "weaviate"
        writable_copy(module_source(go, version, Path(work)), tree)
        apply_edits(tree)
        program = Path(work) / "weaviate-server"
        command = [go, "build", "-trimpath", "-o", str(program), "./cmd/weaviate-server"]
        print(f"provision: building Weaviate v{version} with our edit ...", flush=True)
        result = subprocess.run(
            command, cwd=tree, env={**os.environ, "GOWORK": "off"}, capture_output=True, text=True
        )
        if result.returncode != 0:
            raise ProvisionError(f"go build failed:\n{result.stderr[-3000:]}")
        _install(program, target)
    _build_record(target).write_text(json.dumps(_fingerprint(target, LISTEN_ADDRESS_BUILD)))


def has_listen_address_edits(binary: Path) -> bool:
    """Whether ``binary`` is our edited build (listens where GRPC_BIND_ADDR and
    CLUSTER_BIND_ADDR say), as recorded when it was built and unchanged since."""
    try:
        recorded = json.loads(_build_record(binary).read_text())
        return recorded == _fingerprint(binary, LISTEN_ADDRESS_BUILD)
    except (OSError, ValueError):
        return False


def _build_record(binary: Path) -> Path:
    return binary.with_name(binary.name + ".build.json")


def _fingerprint(binary: Path, build: str) -> dict:
    """What identifies one binary cheaply: another file put at the path has another size or time."""
    stat = binary.stat()
    return {"build": build, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def download_release(version: str, target: Path) -> None:
    system = platform.system()
    machine = {"x86_64": "amd64", "aarch64": "arm64", "arm64": "arm64"}.get(platform.machine())
    if system != "Linux" or machine is None:
        raise ProvisionError(f"no release tarball for {system} {platform.machine()}")
    url = f"{RELEASES}/v{version}/weaviate-v{version}-Linux-{machine}.tar.gz"
    print(f"weaviate: downloading {url} ...", flush=True)
    try:
        with urllib.request.urlopen(url, timeout=120) as response:
            archive = response.read()
    except OSError as err:
        raise ProvisionError(f"download of {url} failed: {err}") from None
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar, tempfile.TemporaryDirectory() as tmp:
        tar.extract("weaviate", path=tmp, filter="data")
        _install(Path(tmp) / "weaviate", target)


def _install(source: Path, target: Path) -> None:
    """Move into place atomically, executable."""
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".part")
    shutil.copyfile(source, partial)
    partial.chmod(0o755)
    os.replace(partial, target)


def provision(version: str = WEAVIATE_VERSION, directory: Path | None = None) -> tuple[Path, str]:
    """Make sure the binary exists, our build if Go allows; returns its path and what was done."""
    target = embedded_binary_path(version, directory)
    if has_listen_address_edits(target):
        return target, "found"
    started = time.perf_counter()
    try:
        build_with_go(version, target)
        return target, f"built with our edit in {time.perf_counter() - started:.0f} s"
    except SourceMismatch:
        raise
    except ProvisionError as err:
        go_failure = str(err)
    if target.exists():
        return target, (
            f"found, not our build ({go_failure}): the local stack will require an API key"
        )
    try:
        download_release(version, target)
    except ProvisionError as err:
        raise ProvisionError(
            f"could not provision Weaviate v{version}: {go_failure}; {err}. Install Go 1.26+ "
            "(https://go.dev/dl) or allow downloads from GitHub, then run `make setup` again."
        ) from None
    return target, (
        f"downloaded the release in {time.perf_counter() - started:.0f} s ({go_failure}): "
        "the local stack will require an API key"
    )


def prism_binary_path(beam_version: str, cache: Path = PRISM_CACHE) -> Path:
    """The unpacked binary Beam's PrismRunner uses for a release version."""
    machine = {"x86_64": "amd64", "aarch64": "arm64", "arm64": "arm64"}.get(
        platform.machine(), platform.machine()
    )
    return cache / f"apache_beam-v{beam_version}-prism-{platform.system().lower()}-{machine}"


def provision_prism(beam_version: str, cache: Path = PRISM_CACHE) -> tuple[Path, str]:
    """Build Prism for ``beam_version`` and put it where PrismRunner looks first."""
    binary = prism_binary_path(beam_version, cache)
    archive = binary.with_name(binary.name + ".zip")
    if binary.exists() and archive.exists():
        return binary, "found"
    started = time.perf_counter()
    go_install(PRISM_MODULE, beam_version, binary)
    with zipfile.ZipFile(archive.with_name(archive.name + ".part"), "w") as zipped:
        zipped.write(binary, arcname=binary.name)
    os.replace(archive.with_name(archive.name + ".part"), archive)
    return binary, f"built with go install in {time.perf_counter() - started:.0f} s"


def installed_beam_version() -> str | None:
    from importlib import metadata

    try:
        return metadata.version("apache-beam")
    except metadata.PackageNotFoundError:
        return None


def main() -> int:
    try:
        path, what = provision()
        print(f"weaviate: v{WEAVIATE_VERSION} {what}: {path}")
        beam_version = installed_beam_version()
        if beam_version:
            path, what = provision_prism(beam_version)
            print(f"prism: v{beam_version} {what}: {path}")
    except ProvisionError as err:
        print(f"provision: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
