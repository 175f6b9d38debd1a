"""ib-runner's own logic: reading engine metrics, the job name, Flink's config, the command.

The clusters themselves run in `make dist-test` (tests/dist).
"""

from __future__ import annotations

import base64
import json
import os
import socket
import time

import pytest
import yaml

from pipelines.command import CommandParser
from pipelines.ingest.command import build_parser, with_job_name
from pipelines.ingest.progress import COUNTERS, NAMESPACE, log, progress_line, workers_by_stage
from pipelines.job_progress import ProgressReporter
from pipelines.runners import provision
from pipelines.runners.cluster import Cluster, load_cluster
from pipelines.runners.command import main as ib_runner
from pipelines.runners.metrics import counters_in_query_results, user_counters


def monitoring_info(
    namespace: str, name: str, value: int, urn: str = "beam:metric:user:sum_int64:v1"
):
    varint = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        varint.append(byte | (0x80 if value else 0))
        if not value:
            break
    return {
        "urn": urn,
        "type": "beam:metrics:sum_int64:v1",
        "payload": base64.b64encode(bytes(varint)).decode(),
        "labels": {"NAMESPACE": namespace, "NAME": name, "PTRANSFORM": "step"},
    }


def test_flink_accumulator_counters_are_summed_over_steps():
    document = {
        "metrics": {
            "attempted": [
                monitoring_info("ib_ingest", "written", 300),
                monitoring_info("ib_ingest", "written", 5000),  # the same counter, another step
                monitoring_info("ib_ingest", "read", 1),
                monitoring_info("other", "written", 7),
                monitoring_info("ib_ingest", "x", 9, urn="beam:metric:element_count:v1"),
            ]
        }
    }
    counts = user_counters(json.dumps(document), "ib_ingest")
    assert counts == {"written": 5300, "read": 1}
    assert user_counters("not json", "ib_ingest") == {}


# As Spark's UI shows Beam's accumulator (MetricQueryResults as text), shortened.
SPARK_VALUE = (
    "MetricQueryResults(Counters(ref_PCollection_PCollection_30:beam:metric:element_count:v1 "
    "{PCOLLECTION=ref_PCollection_PCollection_31}: 1, ref_PCollection_PCollection_10:beam:"
    "metric:user:sum_int64:v1 {NAMESPACE=ib_ingest, NAME=written, PTRANSFORM=ref_Write_3}: "
    "560, ref_PCollection_PCollection_12:beam:metric:user:sum_int64:v1 {NAMESPACE=ib_ingest, "
    "NAME=written, PTRANSFORM=ref_Write_4}: 40, ref_PCollection_PCollection_10:beam:metric:"
    "user:sum_int64:v1 {NAMESPACE=ib_ingest_workers, NAME=embed vm:3372, PTRANSFORM=ref_Embed_"
    "30}: 56), Distributions(x:beam:metric:user:distribution_int64:v1 {NAMESPACE=ib_ingest, "
    "NAME=written, PTRANSFORM=y}: 99), Gauges())"
)


def test_spark_accumulator_text_is_parsed_per_namespace():
    assert counters_in_query_results(SPARK_VALUE, "ib_ingest") == {"written": 600}
    assert counters_in_query_results(SPARK_VALUE, "ib_ingest_workers") == {"embed vm:3372": 56}
    assert workers_by_stage({"embed vm:3372": 56, "embed vm:9": 4, "decode vm:9": 8}) == {
        "embed": {"vm:3372": 56, "vm:9": 4},
        "decode": {"vm:9": 8},
    }


def reporter(every_s: float, counts) -> ProgressReporter:
    return ProgressReporter(
        every_s, counts, namespace=NAMESPACE, counters=COUNTERS, line=progress_line, logger=log
    )


def test_progress_shows_the_last_known_counts_of_another_source(caplog):
    answers = iter([{"read": 5, "written": 3}, None, {"read": 9, "written": 9}])
    with caplog.at_level("INFO", logger="ib_ingest"), reporter(0.05, lambda: next(answers, None)):
        time.sleep(0.4)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("progress")]
    assert lines[0].startswith("progress: read 5, decoded 0, embedded 0, written 3")
    assert lines[1].startswith("progress: read 5,")  # nothing new: the last known
    assert lines[2].startswith("progress: read 9, decoded 0, embedded 0, written 9")


def test_progress_rates_cover_the_last_half_minute():
    progress = reporter(5.0, None)
    progress.started = 0.0
    for now in range(0, 125, 5):  # 10 objects/s for a minute, then 2 objects/s
        progress._last = {"written": 10 * min(now, 60) + 2 * max(now - 60, 0)}
        latest = progress.progress(float(now))
    assert latest.elapsed_s == 120.0 and latest["written"] == 720
    assert 30.0 <= latest.window_s <= 35.0
    assert latest.rate("written") == 2.0


def test_job_name_is_unique_and_usable_by_every_runner_unless_given():
    args, name = with_job_name(["--runner=PortableRunner"], "My_Photos")
    assert args[-1] == f"--job_name={name}" and name.startswith("ib-ingest-my-photos-")
    assert set(name) <= set("abcdefghijklmnopqrstuvwxyz0123456789-")
    assert with_job_name(["--runner=PortableRunner"], "My_Photos")[1] != name
    assert with_job_name(["--job_name=nightly"], "C") == (["--job_name=nightly"], "nightly")


def test_flags_are_never_abbreviated_so_beam_gets_its_own():
    args, beam = build_parser().parse_known_args(
        ["--input", "x", "--collection", "C", "--runner=PortableRunner", "--runner-metrics-url=u"]
    )
    assert beam == ["--runner=PortableRunner"] and args.runner_metrics_url == "u"
    assert CommandParser().allow_abbrev is False


def test_job_server_pom_takes_the_served_job_service_and_spark_from_the_cluster():
    flink = provision.job_server_pom("flink")
    assert "<artifactId>beam-runners-flink-1.19</artifactId><version>2.70.0</version>" in flink
    assert (
        "<artifactId>beam-runners-java-job-service</artifactId><version>2.65.0</version>" in flink
    )
    assert "org.apache.spark" not in flink
    spark = provision.job_server_pom("spark")
    assert "<groupId>org.apache.spark</groupId><artifactId>*</artifactId>" in spark
    assert _pinned_beam_version() == provision.BEAM_VERSION


def _pinned_beam_version() -> str:
    from importlib import metadata

    return metadata.version("apache-beam")


def test_flink_config_keeps_the_stock_java_options_and_adds_restarts(tmp_path):
    home = tmp_path / "flink"
    (home / "conf").mkdir(parents=True)
    stock = {"env": {"java": {"opts": {"all": "--add-opens=java.base/java.util=ALL-UNNAMED"}}}}
    (home / "conf/config.yaml").write_text(yaml.safe_dump(stock))
    cluster = Cluster("flink", tmp_path / "c", workers=3, slots=2, ports={"rpc": 1, "rest": 2})
    config = yaml.safe_load(cluster._flink_config(home))
    assert config["env.java.opts.all"] == "--add-opens=java.base/java.util=ALL-UNNAMED"
    assert config["restart-strategy.type"] == "fixed-delay"
    assert config["taskmanager.numberOfTaskSlots"] == 2 and config["parallelism.default"] == 6
    assert config["rest.port"] == 2 and config["rest.bind-address"] == "localhost"


def test_ingest_flags_run_the_sdk_harness_in_worker_processes(tmp_path):
    flink = Cluster("flink", tmp_path, workers=2, slots=2, job_port=8123, ports={"rest": 9})
    flags = flink.ingest_flags()
    assert "--environment_type=PROCESS" in flags and "--job_endpoint=localhost:8123" in flags
    assert "--parallelism=4" in flags and "--runner-metrics-url=http://localhost:9" in flags
    config = json.loads(
        next(f for f in flags if f.startswith("--environment_config=")).split("=", 1)[1]
    )
    assert config == {"command": str(tmp_path / "sdk-worker.sh")}
    spark = Cluster("spark", tmp_path, ports={"driver_ui": 7, "master_ui": 8}, staged_jar="/r.jar")
    assert not any(f.startswith("--parallelism") for f in spark.ingest_flags())
    assert "--files_to_stage=/r.jar" in spark.ingest_flags()  # not the whole classpath


def test_stop_and_status_without_a_cluster(tmp_path, capsys):
    assert ib_runner(["stop", "--dir", str(tmp_path)]) == 0
    assert ib_runner(["status", "--dir", str(tmp_path)]) == 1
    assert f"no cluster in {tmp_path}" in capsys.readouterr().out


def test_a_port_in_use_is_refused_before_anything_is_provisioned(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(provision, "provision", lambda engine: pytest.fail("provisioned"))
    with socket.socket() as busy:
        busy.bind(("0.0.0.0", 0))
        busy.listen()
        port = busy.getsockname()[1]
        status = ib_runner(["start", "flink", "--dir", str(tmp_path), "--job-port", str(port)])
    assert status == 1
    err = capsys.readouterr().err
    assert f"port {port} is in use" in err and "--job-port" in err
    assert load_cluster(tmp_path) is None


def test_stop_ends_every_recorded_process_group(tmp_path):
    """A recorded process and the child it started are both gone after stop."""
    import subprocess

    cluster = Cluster("flink", tmp_path)
    cluster._launch(
        "taskmanager-1", ["bash", "-c", "sleep 300 & sleep 300"], {"PATH": "/usr/bin:/bin"}
    )
    pid = cluster.processes[0].pid
    time.sleep(0.3)
    children = subprocess.run(
        ["pgrep", "-g", str(pid)], capture_output=True, text=True
    ).stdout.split()
    assert len(children) >= 2
    assert load_cluster(tmp_path).processes[0].pid == pid  # recorded as it started
    assert cluster.stop() == ["taskmanager-1"]
    assert subprocess.run(["pgrep", "-g", str(pid)], capture_output=True).stdout == b""
    assert load_cluster(tmp_path) is None


def test_exact_tally_counts_sums_and_differences(tmp_path):
    import apache_beam as beam

    from pipelines.ingest.tally import CountInto, read_tally

    path = str(tmp_path / "job-tally.csv")
    with beam.Pipeline() as pipeline:
        five = pipeline | "Five" >> beam.Create(range(5))
        two = pipeline | "Two" >> beam.Create(["a", "b"])
        none = pipeline | "None" >> beam.Create([])
        sources = {"read": [(1, five), (1, two)], "unchanged": [(1, five), (-1, two)]}
        _ = pipeline | CountInto(sources | {"failed": [(1, none)]}, path)
    names = ["read", "unchanged", "failed"]
    assert read_tally(path, names) == {"read": 7, "unchanged": 3, "failed": 0}
    assert not (tmp_path / "job-tally.csv").exists()  # read once, then removed
    assert read_tally(path, names) is None


def test_tally_goes_where_this_process_can_read_it():
    from pipelines.ingest.tally import tally_folder

    assert tally_folder("gs://bucket/tmp", "DOCKER") == "gs://bucket/tmp"
    assert tally_folder(None, "DOCKER") is None and tally_folder(None, "external") is None
    for environment in (None, "PROCESS", "LOOPBACK"):
        folder = tally_folder(None, environment)
        assert folder and os.path.isdir(folder)
        os.rmdir(folder)
