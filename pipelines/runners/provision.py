"""Everything a local Flink or Spark cluster needs, fetched once into a cache.

* **Flink** 1.19: the distribution's jars from PyPI's ``apache-flink-libraries``
  (an sdist holding ``deps/{lib,opt,plugins}``) and its scripts and config
  from the ``apache-flink`` wheel, put together as a Flink home.
* **Spark** 3.5: PyPI's ``pyspark``, which is a whole Spark home.
* **Beam's job server** for each engine, at :data:`BEAM_VERSION` (the Python
  SDK's pinned version: SDK and job server must match): the runner module's
  classpath from Maven Central, assembled by ``mvn dependency:copy-dependencies``
  from a generated POM. Only the runner modules are published at 2.70.0, not
  the shaded job-server jars, and ``beam-runners-java-job-service`` is not
  published for 2.66-2.73, so its 2.65.0 (same vendored gRPC) stands in.
* **Beam's SDK boot binary** (what the ``PROCESS`` environment starts per
  worker), built with ``go install`` at the same version.

Each part lands in its own folder under :func:`cache_root` and is marked
complete only when it is, so an interrupted download is redone, never half
used. Every failure is a :class:`ProvisionError` naming what to install or
retry.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from collections.abc import Callable
from pathlib import Path

from ..provision import ProvisionError, go_install

BEAM_VERSION = "2.70.0"
JOB_SERVICE_VERSION = "2.65.0"  # the newest beam-runners-java-job-service Maven serves
FLINK_VERSION = "1.19.3"
FLINK_RUNNER = "beam-runners-flink-1.19"
SPARK_VERSION = "3.5.7"
SPARK_RUNNER = "beam-runners-spark-3"
BOOT_MODULE = "github.com/apache/beam/sdks/v2/python/container"
DONE = ".complete"


def cache_root() -> Path:
    """``$IB_RUNNER_CACHE``, else ``~/.cache/ib-vectorizer/runners``."""
    configured = os.environ.get("IB_RUNNER_CACHE")
    return Path(configured) if configured else Path.home() / ".cache/ib-vectorizer/runners"


def cached(folder: Path, build: Callable[[Path], None], what: str) -> Path:
    """``folder``, built by ``build(partial)`` into a sibling and moved in place when done."""
    if (folder / DONE).exists():
        return folder
    started = time.perf_counter()
    print(f"ib-runner: provisioning {what} into {folder} ...", file=sys.stderr, flush=True)
    partial = folder.with_name(folder.name + ".part")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    build(partial)
    (partial / DONE).write_text(f"{time.time():.0f}\n")
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(partial, folder)
    print(
        f"ib-runner: {what} ready in {time.perf_counter() - started:.0f} s",
        file=sys.stderr,
        flush=True,
    )
    return folder


def require_java() -> str:
    java = shutil.which("java")
    if java is None:
        raise ProvisionError("Java 17 is missing: install it (apt-get install openjdk-17-jre)")
    return java


def _run(command: list[str], what: str, cwd: Path | None = None) -> None:
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True)
    if result.returncode != 0:
        detail = (result.stdout + result.stderr).strip().splitlines()[-15:]
        raise ProvisionError(
            f"{what} failed (check the network and the package index, then run again): "
            + " | ".join(detail)
        )


def _pip_download(packages: list[str], into: Path) -> None:
    _run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--progress-bar", "off",
         "-d", str(into), *packages],
        "pip download " + " ".join(packages),
    )  # fmt: skip


# ------------------------------------------------------------------------------ Flink


def flink_home() -> Path:
    return cached(cache_root() / f"flink-{FLINK_VERSION}", _build_flink, f"Flink {FLINK_VERSION}")


def _build_flink(home: Path) -> None:
    with tempfile.TemporaryDirectory(prefix="flink-download-") as tmp:
        downloads = Path(tmp)
        _pip_download(
            [f"apache-flink-libraries=={FLINK_VERSION}", f"apache-flink=={FLINK_VERSION}"],
            downloads,
        )
        sdist = next(downloads.glob("apache*flink*libraries*.tar.gz"))
        with tarfile.open(sdist) as tar:
            for member in tar.getmembers():
                parts = Path(member.name).parts
                if len(parts) > 2 and parts[1] == "deps" and parts[2] in ("lib", "opt", "plugins"):
                    member.name = str(Path(*parts[2:]))
                    tar.extract(member, home, filter="data")
                elif parts[-1] == "bash-java-utils.jar":
                    member.name = "bin/bash-java-utils.jar"
                    tar.extract(member, home, filter="data")
        wheel = next(downloads.glob("apache_flink-*.whl"))
        with zipfile.ZipFile(wheel) as zipped:
            for name in zipped.namelist():
                parts = Path(name).parts
                if len(parts) > 2 and parts[0] == "pyflink" and parts[1] in ("bin", "conf"):
                    target = home / Path(*parts[1:])
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_bytes(zipped.read(name))
    for script in (home / "bin").iterdir():
        script.chmod(0o755)
    if not (home / "bin/bash-java-utils.jar").exists() or not list((home / "lib").glob("*.jar")):
        raise ProvisionError("the Flink packages from PyPI did not hold a Flink distribution")


# ------------------------------------------------------------------------------ Spark


def spark_home() -> Path:
    site = cached(cache_root() / f"spark-{SPARK_VERSION}", _build_spark, f"Spark {SPARK_VERSION}")
    return site / "pyspark"


def _build_spark(site: Path) -> None:
    _run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--progress-bar", "off",
         "--target", str(site), f"pyspark=={SPARK_VERSION}"],
        f"pip install pyspark=={SPARK_VERSION}",
    )  # fmt: skip
    for script in (site / "pyspark/bin").iterdir():
        script.chmod(0o755)


# ------------------------------------------------------------------------ job servers


def _dependency(group: str, artifact: str, version: str, exclude: list[str] = ()) -> str:
    exclusions = "".join(
        f"<exclusion><groupId>{g}</groupId><artifactId>{a}</artifactId></exclusion>"
        for g, a in (item.split(":") for item in exclude)
    )
    return (
        f"<dependency><groupId>{group}</groupId><artifactId>{artifact}</artifactId>"
        f"<version>{version}</version><exclusions>{exclusions}</exclusions></dependency>"
    )


def job_server_pom(engine: str) -> str:
    """A POM whose runtime classpath is Beam's job server for ``engine``."""
    runner = {"flink": FLINK_RUNNER, "spark": SPARK_RUNNER}[engine]
    runner_excludes = ["org.apache.beam:beam-runners-java-job-service"]
    if engine == "spark":
        runner_excludes.append("org.apache.spark:*")  # the cluster's own Spark jars are used
    dependencies = [
        _dependency("org.apache.beam", runner, BEAM_VERSION, runner_excludes),
        _dependency(
            "org.apache.beam", "beam-runners-java-job-service", JOB_SERVICE_VERSION, ["*:*"]
        ),
        _dependency("org.apache.beam", "beam-sdks-java-expansion-service", BEAM_VERSION),
        _dependency("org.apache.commons", "commons-compress", "1.26.2"),
        _dependency("org.slf4j", "slf4j-simple", "2.0.16"),
    ]
    return (
        '<project xmlns="http://maven.apache.org/POM/4.0.0"><modelVersion>4.0.0</modelVersion>'
        f"<groupId>local.ib-runner</groupId><artifactId>{engine}-job-server</artifactId>"
        "<version>1</version><packaging>pom</packaging>"
        f"<dependencies>{''.join(dependencies)}</dependencies></project>\n"
    )


def job_server_classpath(engine: str) -> Path:
    """The folder of jars Beam's job server for ``engine`` runs from."""
    folder = cache_root() / f"beam-{BEAM_VERSION}-{engine}-job-server"
    return cached(folder, lambda f: _build_job_server(engine, f), f"Beam's {engine} job server")


def _build_job_server(engine: str, folder: Path) -> None:
    require_java()
    mvn = shutil.which("mvn")
    if mvn is None:
        raise ProvisionError("Maven is missing: install it (apt-get install maven)")
    (folder / "pom.xml").write_text(job_server_pom(engine))
    _run(
        [mvn, "-q", "-B", "-f", str(folder / "pom.xml"), "dependency:copy-dependencies",
         "-DincludeScope=runtime", f"-DoutputDirectory={folder / 'lib'}"],
        f"mvn (Beam's {engine} job server {BEAM_VERSION})",
    )  # fmt: skip


# ------------------------------------------------------------------------ SDK harness


def boot_binary() -> Path:
    """Beam's Python SDK boot binary (the PROCESS environment's ``boot``)."""
    folder = cache_root() / f"beam-{BEAM_VERSION}-boot"
    built = cached(
        folder,
        lambda f: go_install(BOOT_MODULE, BEAM_VERSION, f / "boot"),
        f"Beam's SDK boot binary {BEAM_VERSION}",
    )
    return built / "boot"


def provision(engine: str) -> dict[str, Path]:
    """Everything ``engine`` needs; the paths by role."""
    require_java()
    home = flink_home() if engine == "flink" else spark_home()
    return {"home": home, "job_server": job_server_classpath(engine), "boot": boot_binary()}


def main(argv: list[str] | None = None) -> int:
    """``python -m pipelines.runners.provision [flink] [spark]``: provision, say where."""
    engines = (argv if argv is not None else sys.argv[1:]) or ["flink", "spark"]
    try:
        for engine in engines:
            for role, path in provision(engine).items():
                print(f"{engine} {role}: {path}")
    except ProvisionError as err:
        print(f"ib-runner: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
