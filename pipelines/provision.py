"""Provision the Go programs the project runs: Weaviate and Beam's Prism runner.

Both are Go modules, so where there is Go they are built from the Go module
proxy (the same programs as the release binaries); Go's caches make a second
build fast. ``make setup`` runs ``python -m pipelines.provision``.

Weaviate goes where weaviate-client's embedded mode finds it.

``weaviate.connect_to_embedded(version=V)`` runs
``<binary_path>/weaviate-v{V}-{sha256("v" + V)}`` and downloads a release
tarball only when that file is missing. ``make setup`` calls :func:`provision`,
which puts the binary there by the cheapest route available:

1. it is already there: nothing to do;
2. Go is installed: ``go install github.com/weaviate/weaviate/cmd/weaviate-server@vV``
   builds the same program as the release from the Go module proxy (Go's module
   and build caches make a second build fast);
3. otherwise: download the release tarball for this OS and CPU.

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
from pathlib import Path

WEAVIATE_VERSION = "1.38.11"
MODULE = "github.com/weaviate/weaviate/cmd/weaviate-server"
RELEASES = "https://github.com/weaviate/weaviate/releases/download"
PRISM_MODULE = "github.com/apache/beam/sdks/v2/go/cmd/prism"
PRISM_CACHE = Path.home() / ".apache_beam" / "cache" / "prism" / "bin"


class ProvisionError(RuntimeError):
    """No route to a Weaviate binary worked; the message says what to install."""


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


def go_install(module: str, version: str, target: Path) -> None:
    """``go install module@vversion`` and move the program to ``target``."""
    go = shutil.which("go")
    if go is None:
        raise ProvisionError("Go is not installed")
    with tempfile.TemporaryDirectory(prefix="go-build-") as gobin:
        env = {**os.environ, "GOBIN": gobin}
        command = [go, "install", f"{module}@v{version}"]
        print(f"provision: {' '.join(command[1:])} ...", flush=True)
        result = subprocess.run(command, env=env, capture_output=True, text=True)
        if result.returncode != 0:
            raise ProvisionError(f"go install failed:\n{result.stderr[-3000:]}")
        _install(Path(gobin) / module.rsplit("/", 1)[1], target)


def build_with_go(version: str, target: Path) -> None:
    go_install(MODULE, version, target)


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
    """Make sure the binary exists; returns its path and what was done."""
    target = embedded_binary_path(version, directory)
    if target.exists():
        return target, "found"
    started = time.perf_counter()
    failures = []
    for route, action in (
        (build_with_go, "built with go install"),
        (download_release, "downloaded the release"),
    ):
        try:
            route(version, target)
            return target, f"{action} in {time.perf_counter() - started:.0f} s"
        except ProvisionError as err:
            failures.append(str(err))
    raise ProvisionError(
        "could not provision Weaviate v"
        + version
        + ": "
        + "; ".join(failures)
        + ". Install Go 1.26+ (https://go.dev/dl) or allow downloads from GitHub, "
        "then run `make setup` again."
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
