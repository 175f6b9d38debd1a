"""Start and stop a Flink or Spark cluster and Beam's job server, as separate processes.

A cluster lives in a folder (``--dir``): its configuration, logs, work dirs,
the SDK worker script and ``runner.json``, which records every process it
started (role, pid, log) and its ports. ``start`` on a folder whose cluster
runs prints the same flags again; ``stop`` ends every process group it
recorded (SIGTERM, then SIGKILL) and removes the work dirs Spark fills with
copied jars, so nothing is left behind.

Every process runs in its own session, detached from ``ib-runner``, so the
cluster outlives the command that started it and a Ctrl-C in that terminal
does not reach it. Workers run Beam's SDK harness in separate processes
(the ``PROCESS`` environment: Beam's boot binary running this Python), the
way a real cluster runs it in containers.

Faults are the engine's job, configured here: Flink restarts a failed job
from its sources (fixed delay, :data:`RESTART_ATTEMPTS`), with heartbeats
short enough that a lost TaskManager is noticed in seconds; Spark retries
failed tasks (``spark.task.maxFailures``) on the executors that remain.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ib_vectorizer.server_process import free_ports, port_free, tail

from ..provision import ProvisionError
from . import provision
from .metrics import get_json

ENGINES = ("flink", "spark")
STATE_FILE = "runner.json"
READY_TIMEOUT_S = 180.0
STOP_GRACE_S = 15.0
RESTART_ATTEMPTS = 10
TASK_MAX_FAILURES = 8
HOST = "localhost"

# What Spark needs opened on Java 17 (as Spark's own launcher sets for its JVMs).
JAVA17_OPENS = [
    f"--add-opens=java.base/{package}=ALL-UNNAMED"
    for package in (
        "java.lang", "java.lang.invoke", "java.lang.reflect", "java.io", "java.net", "java.nio",
        "java.util", "java.util.concurrent", "java.util.concurrent.atomic", "jdk.internal.ref",
        "sun.nio.ch", "sun.nio.cs", "sun.security.action", "sun.util.calendar",
    )
] + ["-Djdk.reflect.useDirectMethodHandle=false"]  # fmt: skip


class RunnerError(RuntimeError):
    """The cluster cannot start or be found; the message says what to do."""


@dataclass
class Process:
    role: str  # jobmanager, taskmanager-1, master, worker-2, job-server
    pid: int
    log: str
    command: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)  # on top of ib-runner's environment

    def alive(self) -> bool:
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return not _is_zombie(self.pid)


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1].startswith("Z")
    except (OSError, IndexError):
        return False


@dataclass
class Cluster:
    """One engine's cluster plus its job server, as recorded in ``directory``."""

    engine: str
    directory: Path
    workers: int = 2
    slots: int = 2
    job_port: int = 8099
    ports: dict[str, int] = field(default_factory=dict)
    processes: list[Process] = field(default_factory=list)
    staged_jar: str = ""  # Spark: the one jar an application ships (see ingest_flags)

    # ------------------------------------------------------------------ what users see

    @property
    def job_endpoint(self) -> str:
        return f"{HOST}:{self.job_port}"

    @property
    def web_ui(self) -> str:
        port = self.ports["rest"] if self.engine == "flink" else self.ports["master_ui"]
        return f"http://{HOST}:{port}"

    @property
    def metrics_url(self) -> str:
        """Where a running job's counters are read (:mod:`.metrics`)."""
        if self.engine == "flink":
            return self.web_ui
        return f"http://{HOST}:{self.ports['driver_ui']}"

    def ingest_flags(self) -> list[str]:
        """The ``ib-ingest`` options that run a job on this cluster."""
        flags = [
            "--runner=PortableRunner",
            f"--job_endpoint={self.job_endpoint}",
            "--environment_type=PROCESS",
            "--environment_config=" + json.dumps({"command": str(self.sdk_worker_script)}),
            f"--runner-metrics-url={self.metrics_url}",
        ]
        if self.engine == "flink":  # Spark uses every core its workers offer
            flags.append(f"--parallelism={self.workers * self.slots}")
        if self.staged_jar:  # executors load the job server's jars from this disk instead
            flags.append(f"--files_to_stage={self.staged_jar}")
        return flags

    @property
    def sdk_worker_script(self) -> Path:
        return self.directory / "sdk-worker.sh"

    def worker_role(self) -> str:
        return "taskmanager" if self.engine == "flink" else "worker"

    # ------------------------------------------------------------------ lifecycle

    def running(self) -> bool:
        return bool(self.processes) and all(p.alive() for p in self.processes)

    def start(self) -> None:
        """Provision, start every process, wait until the cluster and job server answer."""
        if self.workers < 1 or self.slots < 1:
            raise RunnerError("--workers and --slots must be 1 or more")
        self._check_job_ports()
        paths = provision.provision(self.engine)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._write_sdk_worker_script(paths["boot"])
        try:
            if self.engine == "flink":
                self._start_flink(paths)
            else:
                self._start_spark(paths)
        except BaseException:
            self.stop()
            raise
        self.save()

    def stop(self) -> list[str]:
        """End every recorded process group; what was stopped, by role."""
        stopped = [p.role for p in self.processes if p.alive()]
        for process in reversed(self.processes):
            _signal_group(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_S
        while time.monotonic() < deadline and any(_group_alive(p.pid) for p in self.processes):
            time.sleep(0.2)
        for process in self.processes:
            _signal_group(process.pid, signal.SIGKILL)
        self.processes = []
        for scratch in ("spark-work", "sdk-workers", "artifacts", "tmp"):
            shutil.rmtree(self.directory / scratch, ignore_errors=True)
        (self.directory / STATE_FILE).unlink(missing_ok=True)
        return stopped

    def save(self) -> None:
        state = asdict(self) | {"directory": str(self.directory)}
        (self.directory / STATE_FILE).write_text(json.dumps(state, indent=1) + "\n")

    # ------------------------------------------------------------------ Flink

    def _start_flink(self, paths: dict[str, Path]) -> None:
        home = paths["home"]
        rpc, rest = free_ports(2)
        self.ports |= {"rpc": rpc, "rest": rest}
        conf = self.directory / "flink-conf"
        conf.mkdir(parents=True, exist_ok=True)
        for name in ("log4j-console.properties", "log4j.properties", "logback-console.xml"):
            if (home / "conf" / name).exists():
                shutil.copy(home / "conf" / name, conf / name)
        (conf / "config.yaml").write_text(self._flink_config(home))
        env = {"FLINK_CONF_DIR": str(conf)}
        self._launch("jobmanager", [str(home / "bin/jobmanager.sh"), "start-foreground"], env)
        for number in range(1, self.workers + 1):
            role = f"taskmanager-{number}"
            self._launch(role, [str(home / "bin/taskmanager.sh"), "start-foreground"], env)
        self._wait(f"Flink ({self.workers} TaskManagers)", self._flink_ready)
        self._launch(
            "job-server",
            [provision.require_java(), "-Xmx1g", "-cp", f"{paths['job_server']}/lib/*",
             "org.apache.beam.runners.flink.FlinkJobServerDriver",
             f"--flink-master={HOST}:{rest}", f"--flink-conf-dir={conf}", *self._job_flags()],
            env,
        )  # fmt: skip
        self._wait("Beam's Flink job server", self._job_server_ready)

    def _flink_config(self, home: Path) -> str:
        """The stock config (its Java 17 options) with our addresses, slots and fault handling."""
        import yaml

        stock = yaml.safe_load((home / "conf/config.yaml").read_text()) or {}
        settings = _flatten(stock) | {
            "jobmanager.rpc.address": HOST,
            "jobmanager.rpc.port": self.ports["rpc"],
            "jobmanager.bind-host": HOST,
            "rest.address": HOST,
            "rest.bind-address": HOST,
            "rest.port": self.ports["rest"],
            "taskmanager.host": HOST,
            "taskmanager.bind-host": HOST,
            "taskmanager.numberOfTaskSlots": self.slots,
            # Beam's batch jobs shuffle between many operators; the default 10% of a
            # TaskManager's memory runs out of network buffers on one small TaskManager.
            "taskmanager.memory.network.min": "256mb",
            "taskmanager.memory.network.max": "256mb",
            "cluster.evenly-spread-out-slots": True,
            "parallelism.default": self.workers * self.slots,
            "restart-strategy.type": "fixed-delay",
            "restart-strategy.fixed-delay.attempts": RESTART_ATTEMPTS,
            "restart-strategy.fixed-delay.delay": "3 s",
            "heartbeat.interval": 2000,
            "heartbeat.timeout": 15000,
            "io.tmp.dirs": str(self.directory / "tmp"),
            "metrics.fetcher.update-interval": 2000,
        }
        return "".join(f"{key}: {json.dumps(value)}\n" for key, value in settings.items())

    def _flink_ready(self) -> bool:
        overview = _get_json(f"http://{HOST}:{self.ports['rest']}/overview")
        return bool(overview) and overview.get("taskmanagers") == self.workers

    # ------------------------------------------------------------------ Spark

    def _start_spark(self, paths: dict[str, Path]) -> None:
        home = paths["home"]
        master, master_ui, driver_ui, *worker_ui = free_ports(3 + self.workers)
        self.ports |= {"master": master, "master_ui": master_ui, "driver_ui": driver_ui}
        env = {
            "SPARK_HOME": str(home),
            "SPARK_LOCAL_IP": "127.0.0.1",
            "SPARK_LOG_DIR": str(self.directory / "logs"),
            # Spark copies the job server's jars into an application's work dir and keeps
            # them; remove those of finished applications after a minute.
            "SPARK_WORKER_OPTS": "-Dspark.worker.cleanup.enabled=true "
            "-Dspark.worker.cleanup.interval=30 -Dspark.worker.cleanup.appDataTtl=60",
        }
        spark_class = str(home / "bin/spark-class")
        self._launch(
            "master",
            [spark_class, "org.apache.spark.deploy.master.Master", "--host", HOST,
             "--port", str(master), "--webui-port", str(master_ui)],
            env,
        )  # fmt: skip
        self._wait("the Spark master", lambda: _port_open(master))
        for number, ui in enumerate(worker_ui, start=1):
            work = self.directory / "spark-work" / f"worker-{number}"
            work.mkdir(parents=True, exist_ok=True)
            self._launch(
                f"worker-{number}",
                [spark_class, "org.apache.spark.deploy.worker.Worker", "--host", HOST,
                 "--cores", str(self.slots), "--memory", "3g", "--webui-port", str(ui),
                 "--work-dir", str(work), f"spark://{HOST}:{master}"],
                env,
            )  # fmt: skip
        self._wait(f"Spark ({self.workers} workers)", self._spark_ready)
        self._launch(
            "job-server",
            [provision.require_java(), "-Xmx1g", *JAVA17_OPENS,
             f"-Dspark.ui.port={driver_ui}", "-Dspark.executor.memory=2g",
             f"-Dspark.task.maxFailures={TASK_MAX_FAILURES}",
             # The job server's jars ahead of Spark's own on executors, as on the driver:
             # else Spark's Guava 14 shadows the one Beam needs (NoSuchMethodError).
             f"-Dspark.executor.extraClassPath={paths['job_server']}/lib/*",
             "-cp", f"{paths['job_server']}/lib/*:{home}/jars/*",
             "org.apache.beam.runners.spark.SparkJobServerDriver",
             f"--spark-master-url=spark://{HOST}:{master}", *self._job_flags()],
            env,
        )  # fmt: skip
        self._wait("Beam's Spark job server", self._job_server_ready)
        # By default each application would copy every jar of the job server's classpath
        # (390 jars, 0.42 GB) into each worker's work dir; the executors already load
        # them from this disk (extraClassPath above), so the job ships only the runner's.
        self.staged_jar = str(next(paths["job_server"].glob("lib/beam-runners-spark-3-*.jar")))

    def _spark_ready(self) -> bool:
        state = _get_json(f"http://{HOST}:{self.ports['master_ui']}/json/")
        alive = [w for w in (state or {}).get("workers", []) if w.get("state") == "ALIVE"]
        return len(alive) == self.workers

    # ------------------------------------------------------------------ shared

    def _job_flags(self) -> list[str]:
        return [
            f"--job-host={HOST}",
            f"--job-port={self.job_port}",
            "--artifact-port=0",
            "--expansion-port=0",
            f"--artifacts-dir={self.directory / 'artifacts'}",
        ]

    def _check_job_ports(self) -> None:
        if not port_free(self.job_port, "0.0.0.0"):  # the job server binds every interface
            raise RunnerError(
                f"port {self.job_port} is in use (another job server?): stop what holds it, "
                "or pass --job-port with a free port"
            )

    def _job_server_ready(self) -> bool:
        return _port_open(self.job_port)

    def _launch(self, role: str, command: Sequence[str], env: dict[str, str]) -> None:
        """Start ``command`` with ``env`` on top of ours, detached, logging to logs/<role>.log."""
        logs = self.directory / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        log_path = logs / f"{role}.log"
        env = env | {"FLINK_LOG_DIR": str(logs / role)}
        with open(log_path, "ab") as log:
            child = subprocess.Popen(
                list(command),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=os.environ | env,
                cwd=self.directory,
                start_new_session=True,  # outlives ib-runner; stop() ends its whole group
            )
        self.processes.append(Process(role, child.pid, str(log_path), list(command), env))
        self.save()

    def replace_lost_workers(self) -> list[str]:
        """Start again each TaskManager or worker that died, as Kubernetes restarts a pod.

        A running job is not touched: Flink and Spark take the new worker's slots
        for the tasks they schedule next.
        """
        lost = [p for p in self.processes if p.role.startswith(self.worker_role())]
        lost = [p for p in lost if not p.alive()]
        for process in lost:
            _signal_group(process.pid, signal.SIGKILL)  # what the dead worker left running
            self.processes.remove(process)
            self._launch(process.role, process.command, process.env)
        if lost:
            ready = self._flink_ready if self.engine == "flink" else self._spark_ready
            self._wait(f"{len(lost)} {self.worker_role()}(s) started again", ready)
        return [p.role for p in lost]

    def _wait(self, what: str, ready) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            dead = [p for p in self.processes if not p.alive()]
            if dead:
                raise RunnerError(
                    f"{dead[0].role} exited while starting {what}; its log {dead[0].log} ends:\n"
                    + tail(Path(dead[0].log), 15)
                )
            if ready():
                return
            time.sleep(0.5)
        raise RunnerError(
            f"{what} did not answer within {READY_TIMEOUT_S:.0f} s; see {self.directory}/logs"
        )

    def _write_sdk_worker_script(self, boot: Path) -> None:
        """Beam's boot binary running this Python: what the PROCESS environment starts."""
        workers = self.directory / "sdk-workers"
        workers.mkdir(parents=True, exist_ok=True)
        python_bin = Path(sys.executable).parent
        self.sdk_worker_script.write_text(
            "#!/usr/bin/env bash\n"
            "# One Beam SDK worker: the boot binary for Beam's Python SDK, running the Python\n"
            "# (and the packages) ib-runner was started with.\n"
            f'export PATH="{python_bin}:$PATH" RUN_PYTHON_SDK_IN_DEFAULT_ENVIRONMENT=1\n'
            f'exec "{boot}" --semi_persist_dir="$(mktemp -d "{workers}/worker-XXXXXX")" "$@"\n'
        )
        self.sdk_worker_script.chmod(0o755)


def load_cluster(directory: Path) -> Cluster | None:
    """The cluster recorded in ``directory``, or None."""
    try:
        state = json.loads((directory / STATE_FILE).read_text())
    except FileNotFoundError:
        return None
    except ValueError as err:
        raise RunnerError(f"{directory / STATE_FILE} is not readable ({err}); remove it") from None
    state["directory"] = Path(state["directory"])
    state["processes"] = [Process(**p) for p in state["processes"]]
    return Cluster(**state)


def start_cluster(
    engine: str, directory: Path, workers: int, slots: int, job_port: int
) -> tuple[Cluster, str]:
    """The running cluster in ``directory`` (started unless it runs); and what was done."""
    directory = directory.resolve()
    existing = load_cluster(directory)
    if existing is not None and existing.engine != engine and existing.running():
        raise RunnerError(
            f"a {existing.engine} cluster runs in {directory}: "
            f"ib-runner stop --dir {directory}, or use another --dir"
        )
    if existing is not None and existing.engine == engine:
        dead = {p.role for p in existing.processes if not p.alive()}
        if not dead:
            return existing, "already running"
        if all(role.startswith(existing.worker_role()) for role in dead):
            return existing, f"running; started again: {', '.join(existing.replace_lost_workers())}"
    if existing is not None:
        existing.stop()  # its JobManager, master or job server died: start afresh
    cluster = Cluster(engine, directory, workers=workers, slots=slots, job_port=job_port)
    started = time.perf_counter()
    try:
        cluster.start()
    except ProvisionError as err:
        raise RunnerError(str(err)) from None
    return cluster, f"started in {time.perf_counter() - started:.0f} s"


def _flatten(tree: dict, prefix: str = "") -> dict[str, object]:
    flat: dict[str, object] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat |= _flatten(value, name + ".")
        else:
            flat[name] = value
    return flat


def _signal_group(pid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signum)


def _group_alive(pid: int) -> bool:
    with contextlib.suppress(ChildProcessError):  # reap it if it is our child (started in-process)
        os.waitpid(pid, os.WNOHANG)
    try:
        os.killpg(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1.0)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _get_json(url: str):
    """The JSON at ``url``, or None while nothing (or no JSON) answers there."""
    try:
        return get_json(url)
    except (OSError, ValueError):
        return None
