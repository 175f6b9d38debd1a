"""What the container tests need on this machine, made once and found after.

``python -m tests.containers.provision`` (``make docker-test`` runs it first) makes sure of,
in order, and says for each step whether it was there or what it did:

1. Docker Engine: Debian's ``docker.io`` (and ``debootstrap``) installed with apt, and
   ``dockerd`` running (started in the background, log in ``~/.cache/ib-vectorizer/docker``).
2. Compose v2 (``docker compose``, 2.24 or newer for ``!reset``), which Debian bookworm
   does not package: built from its Go module with the Go toolchain ``make setup`` needs
   anyway, into ``~/.docker/cli-plugins``.
3. A Python base image, ``local/python:3.11-bookworm``, for machines that reach no image
   registry: Debian bookworm made with debootstrap from Debian's mirror, with its
   ``python3.11``, ``python3-venv`` and ``ca-certificates`` (and ``wget``).
4. Weaviate's image under the name ``docker/docker-compose.yml`` gives it, built from the
   Weaviate binary ``make setup`` provisioned (``weaviate.Dockerfile`` beside this file),
   unless an image of that name (say the official one, pulled) is there already.
5. ``local/beam-boot:<Beam version>``: an image holding only Beam's SDK boot binary at
   /opt/apache/beam/boot (the one ``ib-runner`` builds with Go, for the pinned Beam), in
   place of ``apache/beam_python3.11_sdk``, which the Dockerfile takes it from.
6. ``ib-vectorizer:cuda`` built from ``docker/Dockerfile`` with the classic builder (the
   engine has no BuildKit client here), on the base of step 3, with this machine's own CA
   certificates as ``EXTRA_CA_CERTS`` and step 5's image as ``BEAM_SDK_IMAGE`` (the
   classic builder runs the worker stages too). Docker's layer cache makes a second build
   quick.
7. ``ib-vectorizer:beam-worker``, the Dockerfile's ``beam-worker`` target with the same
   options (Beam's SDK worker image; the classic builder made its layers in step 6).

Nothing here is specific to tests but the choice of images; a machine that can pull
``python:3.11-slim-bookworm``, Beam's SDK image and Weaviate's image needs only steps 1,
2, 6 and 7.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from pipelines.provision import ProvisionError
from pipelines.provision import provision as provision_weaviate_binary
from pipelines.runners.provision import BEAM_VERSION, boot_binary

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
DOCKERFILE = ROOT / "docker" / "Dockerfile"
COMPOSE_FILE = ROOT / "docker" / "docker-compose.yml"

BASE_IMAGE = "local/python:3.11-bookworm"
BASE_PACKAGES = ["python3.11", "python3-venv", "python-is-python3", "ca-certificates", "wget"]
DEBIAN_SUITE = "bookworm"
DEBIAN_MIRROR = "http://deb.debian.org/debian"
# The image docker-compose.yml runs (and the variant this machine can build: PyTorch's CPU
# wheel index, which VARIANT=cpu uses, is not reachable here, PyPI is).
IMAGE = "ib-vectorizer:cuda"
VARIANT = "cuda"
# Beam's SDK worker image (the Dockerfile's beam-worker target), and the stand-in for
# Beam's SDK image it takes the boot binary from.
WORKER_IMAGE = "ib-vectorizer:beam-worker"
WORKER_TARGET = "beam-worker"
BOOT_IMAGE = f"local/beam-boot:{BEAM_VERSION}"
BOOT_PATH = "/opt/apache/beam/boot"
# Marks images this module made, so that they are never mistaken for official ones.
LOCAL_LABEL = "ib-vectorizer.local-build"

COMPOSE_MODULE = "github.com/docker/compose/v2"
COMPOSE_VERSION = "2.40.3"
COMPOSE_MINIMUM = (2, 24)
CLI_PLUGINS = Path.home() / ".docker" / "cli-plugins"
# Where this machine keeps the CA certificates it adds to the system's (Debian's place).
LOCAL_CA_DIR = Path("/usr/local/share/ca-certificates")
STATE = Path.home() / ".cache" / "ib-vectorizer" / "docker"


def say(message: str) -> None:
    print(f"docker-test: {message}", flush=True)


def run(command: list[str], check: bool = True, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(command, capture_output=True, text=True, **kwargs)
    if check and result.returncode != 0:
        raise ProvisionError(
            f"{' '.join(command[:4])} ... exited {result.returncode}:\n"
            f"{(result.stdout + result.stderr)[-3000:]}"
        )
    return result


def as_root() -> list[str]:
    """The prefix that runs a command as root: none when root already, else sudo."""
    if os.geteuid() == 0:
        return []
    if shutil.which("sudo"):
        return ["sudo"]
    raise ProvisionError("installing Docker needs root: run as root, or install sudo")


# --------------------------------------------------------------------------- 1. engine


def engine_answers() -> bool:
    return docker("info", "--format", "{{.ServerVersion}}", check=False).returncode == 0


def ensure_engine(timeout_s: float = 60.0) -> str:
    missing = [p for p in ("dockerd", "docker", "debootstrap") if shutil.which(p) is None]
    if missing:
        say(f"installing docker.io and debootstrap with apt (missing: {', '.join(missing)})")
        run([*as_root(), "apt-get", "update"])
        run([*as_root(), "apt-get", "install", "-y", "docker.io", "debootstrap"])
    if engine_answers():
        return "running"
    STATE.mkdir(parents=True, exist_ok=True)
    log = STATE / "dockerd.log"
    say(f"starting dockerd (log: {log})")
    with log.open("ab") as out:
        subprocess.Popen(
            [*as_root(), "dockerd"], stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if engine_answers():
            return "started"
        time.sleep(1)
    tail = log.read_text(errors="replace")[-2000:]
    raise ProvisionError(f"dockerd did not answer within {timeout_s:.0f} s; its log:\n{tail}")


# --------------------------------------------------------------------------- 2. compose


def compose_version() -> tuple[int, ...] | None:
    result = docker("compose", "version", "--short", check=False)
    match = re.match(r"v?(\d+)\.(\d+)\.(\d+)", result.stdout.strip())
    return tuple(map(int, match.groups())) if result.returncode == 0 and match else None


def ensure_compose() -> str:
    found = compose_version()
    if found and found >= COMPOSE_MINIMUM:
        return "v" + ".".join(map(str, found))
    go = shutil.which("go")
    if go is None:
        raise ProvisionError("Compose v2 is missing and Go, to build it, is not installed")
    say(f"building Compose v{COMPOSE_VERSION} with Go (a few minutes, once)")
    # `go install` refuses Compose (its go.mod has replace directives): build in the module.
    module = f"{COMPOSE_MODULE}@v{COMPOSE_VERSION}"
    downloaded = json.loads(run([go, "mod", "download", "-json", module]).stdout)["Dir"]
    target = CLI_PLUGINS / "docker-compose"
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="compose-src-") as source:
        shutil.copytree(downloaded, source, dirs_exist_ok=True)
        for path in Path(source).rglob("*"):  # the module cache is read-only
            path.chmod(path.stat().st_mode | 0o200)
        version_flag = f"-X {COMPOSE_MODULE}/internal.Version=v{COMPOSE_VERSION}"
        ldflags = f"-s -w {version_flag}"
        run([go, "build", "-trimpath", "-ldflags", ldflags, "-o", str(target), "./cmd"], cwd=source)
    return f"built v{COMPOSE_VERSION} into {target}"


# --------------------------------------------------------------------------- 3. base image


def docker(*args: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess:
    return run(["docker", *args], check=check, timeout=timeout)


def inspect(kind: str, name: str) -> dict | None:
    """``docker KIND inspect NAME`` (image, container, ...), or None when there is none."""
    result = docker(kind, "inspect", name, check=False)
    return json.loads(result.stdout)[0] if result.returncode == 0 else None


def ensure_base_image() -> str:
    if inspect("image", BASE_IMAGE):
        return "present"
    say(f"making {BASE_IMAGE} with debootstrap ({DEBIAN_SUITE}, about a minute)")
    with tempfile.TemporaryDirectory(prefix="debootstrap-") as scratch:
        rootfs = Path(scratch) / "rootfs"
        include = f"--include={','.join(BASE_PACKAGES)}"
        debootstrap = [*as_root(), "debootstrap", "--variant=minbase", include]
        run([*debootstrap, DEBIAN_SUITE, str(rootfs), DEBIAN_MIRROR])
        for leftovers in ("var/cache/apt/archives", "var/lib/apt/lists"):
            run([*as_root(), "find", str(rootfs / leftovers), "-type", "f", "-delete"])
        tar = subprocess.Popen(
            [*as_root(), "tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE
        )
        changes = [
            "ENV LANG=C.UTF-8",
            "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            f"LABEL {LOCAL_LABEL}=debootstrap",
            'CMD ["python3"]',
        ]
        flags = [word for change in changes for word in ("--change", change)]
        imported = subprocess.run(
            ["docker", "import", *flags, "-", BASE_IMAGE], stdin=tar.stdout, capture_output=True
        )
        tar.stdout.close()
        if tar.wait() != 0 or imported.returncode != 0:
            raise ProvisionError(f"docker import failed: {imported.stderr.decode()[-2000:]}")
        run([*as_root(), "rm", "-rf", str(rootfs)])
    return "made"


# --------------------------------------------------------------------------- 4. Weaviate


def compose_weaviate_image() -> str:
    return yaml.safe_load(COMPOSE_FILE.read_text())["services"]["weaviate"]["image"]


def ensure_weaviate_image() -> str:
    tag = compose_weaviate_image()
    version = tag.rsplit(":", 1)[1]
    existing = inspect("image", tag)
    if existing:
        built_here = LOCAL_LABEL in (existing["Config"].get("Labels") or {})
        return f"{tag} present ({'built here' if built_here else 'not built here'})"
    binary, _ = provision_weaviate_binary(version)
    say(f"building {tag} from {binary}")
    with tempfile.TemporaryDirectory(prefix="weaviate-image-") as context:
        shutil.copy2(binary, Path(context) / "weaviate")
        shutil.copy2(HERE / "weaviate.Dockerfile", Path(context) / "Dockerfile")
        build_args = ["--build-arg", f"BASE_IMAGE={BASE_IMAGE}", "-t", tag, context]
        classic_build(build_args, log=STATE / "build-weaviate.log")
    return f"{tag} built from the binary"


# --------------------------------------------------------------------------- 5. Beam's boot


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def ensure_boot_image() -> str:
    """``BOOT_IMAGE``: only Beam's boot binary, where Beam's SDK images keep it.

    The binary is ``ib-runner``'s (``go install`` of Beam's Python container module at
    the pinned version); the image is remade when that binary changes (a label holds
    its sha256).
    """
    boot = boot_binary()
    digest = file_sha256(boot)
    existing = inspect("image", BOOT_IMAGE)
    if existing and (existing["Config"].get("Labels") or {}).get(LOCAL_LABEL) == digest:
        return "present"
    say(f"building {BOOT_IMAGE} from {boot}")
    with tempfile.TemporaryDirectory(prefix="beam-boot-image-") as context:
        shutil.copy2(boot, Path(context) / "boot")
        (Path(context) / "Dockerfile").write_text(
            f"FROM scratch\nCOPY boot {BOOT_PATH}\nLABEL {LOCAL_LABEL}={digest}\n"
        )
        classic_build(["-t", BOOT_IMAGE, context], log=STATE / "build-beam-boot.log")
    return f"built from {boot} ({'remade' if existing else 'new'})"


# --------------------------------------------------------------------------- 6. our images


def extra_ca_certs() -> str:
    """The CA certificates this machine adds to Debian's, as one PEM text (maybe empty).

    ``IB_EXTRA_CA_CERTS_FILE`` names a PEM file instead.
    """
    chosen = os.environ.get("IB_EXTRA_CA_CERTS_FILE")
    files = [Path(chosen)] if chosen else sorted(LOCAL_CA_DIR.rglob("*.crt"))
    # Stripped, so that the build argument (part of the layer cache key) does not depend on
    # trailing newlines, which $(cat ...) would drop.
    return "\n".join(f.read_text().strip() for f in files if f.is_file())


def classic_build(args: list[str], log: Path) -> None:
    """``docker build`` with the classic builder and the host's network (for the registries)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    command = ["docker", "build", "--network", "host", *args]
    with log.open("w") as out:
        env = {**os.environ, "DOCKER_BUILDKIT": "0"}
        built = subprocess.run(command, env=env, stdout=out, stderr=subprocess.STDOUT)
    if built.returncode != 0:
        raise ProvisionError(f"docker build failed; the end of {log}:\n{log.read_text()[-3000:]}")


@dataclass(frozen=True)
class Build:
    tag: str
    seconds: float
    size_bytes: int
    # Bytes of the layers that copy the two virtualenvs into the image.
    torch_layer_bytes: int
    project_layer_bytes: int

    def summary(self) -> str:
        return (
            f"{self.tag}: built in {self.seconds:.0f} s, {self.size_bytes / 1e9:.2f} GB "
            f"(torch layer {self.torch_layer_bytes / 1e9:.2f} GB, "
            f"project layer {self.project_layer_bytes / 1e9:.2f} GB)"
        )


def copy_layer_bytes(tag: str, destination: str) -> int:
    """Size of the image's layer made by ``COPY ... <destination>``."""
    layers = "{{.Size}}\t{{.CreatedBy}}"
    history = docker("history", "--no-trunc", "--human=false", "--format", layers, tag).stdout
    for line in history.splitlines():
        size, _, created_by = line.partition("\t")
        if "COPY" in created_by and created_by.rstrip().endswith(f" {destination}"):
            return int(size)
    raise ProvisionError(f"{tag} has no layer copying {destination}")


def build_image(tag: str = IMAGE, variant: str = VARIANT, target: str | None = None) -> Build:
    """``tag`` from docker/Dockerfile: its default target (the server), or ``target``."""
    log = STATE / f"build-{variant}{f'-{target}' if target else ''}.log"
    say(f"building {tag} from docker/Dockerfile (log: {log}; the first build takes minutes)")
    started = time.monotonic()
    classic_build(
        [
            "-f",
            str(DOCKERFILE),
            *(["--target", target] if target else []),
            "--build-arg",
            f"VARIANT={variant}",
            "--build-arg",
            f"PYTHON_IMAGE={BASE_IMAGE}",
            "--build-arg",
            f"BEAM_SDK_IMAGE={BOOT_IMAGE}",
            "--build-arg",
            f"EXTRA_CA_CERTS={extra_ca_certs()}",
            "-t",
            tag,
            str(ROOT),
        ],
        log=log,
    )
    seconds = time.monotonic() - started
    torch_bytes = copy_layer_bytes(tag, "/opt/torch")
    size = inspect("image", tag)["Size"]
    return Build(tag, seconds, size, torch_bytes, copy_layer_bytes(tag, "/opt/venv"))


def provision_all() -> Build:
    say(f"engine: {ensure_engine()}")
    say(f"compose: {ensure_compose()}")
    say(f"base image {BASE_IMAGE}: {ensure_base_image()}")
    say(f"weaviate image: {ensure_weaviate_image()}")
    say(f"beam boot image {BOOT_IMAGE}: {ensure_boot_image()}")
    build = build_image()
    say(build.summary())
    say(build_image(WORKER_IMAGE, target=WORKER_TARGET).summary())
    return build


def main() -> int:
    try:
        provision_all()
    except ProvisionError as err:
        print(f"docker-test: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
