"""A flag neither the command nor Beam knows is refused before anything starts.

ib-ingest and ib-tag pass the flags they do not know to Beam, which drops what it
cannot parse: ``--segment-secnds 10`` used to run a whole job without segments.
"""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import pytest

from pipelines.command import CommandError, beam_flags, check_beam_options
from pipelines.ingest import command as ingest
from pipelines.runners.cluster import Cluster
from pipelines.tag import command as tag

BIN = Path(sys.executable).parent
DEAD = "http://127.0.0.1:9"  # were the check to let a job go on, nothing would answer here
INGEST = ["--input", "data", "--collection", "C", "--weaviate-url", DEAD]
TAG = ["--collection", "C", "--labels", "labels.txt", "--weaviate-url", DEAD]


@pytest.fixture
def nothing_starts(monkeypatch):
    """The commands' checks and jobs fail the test if they are reached."""

    def reached(*_args, **_kwargs):
        raise AssertionError("the command went on past an unknown flag")

    for module, names in ((ingest, ("check_runner_options", "check_start", "run")),
                          (tag, ("check_start", "run"))):  # fmt: skip
        for name in names:
            monkeypatch.setattr(module, name, reached)


def test_the_commands_refuse_a_misspelt_flag_with_exit_status_1(tmp_path):
    for command, args, expected in (
        ("ib-ingest", [*INGEST, "--segment-secnds", "10", "--lables", "x.txt"],
         "ib-ingest: unknown option --segment-secnds (did you mean --segment-seconds?)"),
        ("ib-tag", [*TAG, "--vector_nme", "v", "--runner", "PrismRunner"],
         "ib-tag: unknown option --vector_nme (did you mean --vector-name?)"),
    ):  # fmt: skip
        result = subprocess.run(
            [str(BIN / command), *args],
            capture_output=True,
            text=True,
            timeout=300,
            cwd=tmp_path,
        )
        assert result.returncode == 1, result.stderr
        assert result.stderr.strip().splitlines()[-1] == expected, result.stderr
        assert "Traceback" not in result.stderr and "progress" not in result.stderr


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (["--segment-secnds", "10", "--lables", "x.txt"],
         "unknown option --segment-secnds (did you mean --segment-seconds?)"),
        (["--lables", "x.txt"], "unknown option --lables (did you mean --labels?)"),
        (["--segment-secnds=10"],
         "unknown option --segment-secnds (did you mean --segment-seconds?)"),
        (["--segment_seconds", "10"], "(did you mean --segment-seconds?)"),
        (["--runner", "PrismRunner", "--flink_mastr", "h:8081"],
         "unknown option --flink_mastr (did you mean --flink_master?)"),
        (["--tempp_location", "gs://b/t"], "(did you mean --temp_location?)"),
        (["--job_name", "j", "--xyzzy"], "unknown option --xyzzy"),
        (["--streaming", "true"], "unexpected argument 'true' (--streaming takes no value)"),
        (["--streaming=true"], "--streaming takes no value"),
        (["--job_name"], "--job_name needs a value"),
    ],
)  # fmt: skip
def test_ib_ingest_refuses_before_anything_starts(nothing_starts, capsys, flags, expected):
    assert ingest.main([*INGEST, *flags]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("ib-ingest: ") and expected in err[-1]


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (["--top_k", "3"], "unknown option --top_k (did you mean --top-k?)"),
        (["--lable-template", "a {}"], "(did you mean --label-template?)"),
        (["--runner=PrismRunner", "--batch-sise", "9"], "(did you mean --batch-size?)"),
    ],
)
def test_ib_tag_refuses_before_anything_starts(nothing_starts, capsys, flags, expected):
    assert tag.main([*TAG, *flags]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("ib-tag: unknown option ") and expected in err[-1]


def _cluster_flags(tmp_path) -> list[list[str]]:
    flink = Cluster("flink", tmp_path, workers=2, slots=2, job_port=8123, ports={"rest": 9})
    spark = Cluster("spark", tmp_path, ports={"driver_ui": 7, "master_ui": 8}, staged_jar="/r.jar")
    return [flink.ingest_flags(), spark.ingest_flags()]


REAL_FLAG_SETS = [
    ["--runner", "PrismRunner"],
    ["--runner=PrismRunner", "--prism_location", "/opt/prism", "--job_name", "nightly"],
    ["--runner", "DataflowRunner", "--project", "P", "--region", "us-central1",
     "--temp_location", "gs://bucket/tmp", "--sdk_container_image", "IMAGE",
     "--dataflow_service_options",
     "worker_accelerator=type:nvidia-l4;count:1;install-nvidia-driver",
     "--machine_type", "g2-standard-8", "--experiments", "use_runner_v2",
     "--staging_location=gs://bucket/staging", "--max_num_workers", "4", "--no_use_public_ips",
     "--service_account_email", "sa@p.iam.gserviceaccount.com", "--sdk_location", "container"],
    ["--runner=FlinkRunner", "--flink_master=localhost:8081", "--parallelism", "4",
     "--environment_type=EXTERNAL", "--environment_config=localhost:50000",
     "--sdk_worker_parallelism", "2", "--flink_version", "1.19"],
    ["--runner", "SparkRunner", "--spark_master_url", "spark://host:7077",
     "--environment_type", "DOCKER", "--environment_config", "IMAGE"],
    ["--runner=PortableRunner", "--job_endpoint", "localhost:8099",
     "--artifact_endpoint=localhost:8098", "--environment_type=PROCESS",
     '--environment_config={"command": "/w/sdk-worker.sh"}', "--files_to_stage=/r.jar"],
    ["--direct_running_mode", "multi_processing", "--direct_num_workers", "2"],
    ["--save_main_session", "--pickle_library=cloudpickle", "--streaming",
     "--requirements_file", "req.txt", "--setup_file=./setup.py"],
    ["--num_workers", "-1", "--job_name=-dash"],  # values of flags that take one
    ["--update_compatibility_version", "--streaming"],  # an optional value left out
    ["--runner", "RenderRunner", "--render_output", "graph.svg"],  # render.py's own options
]  # fmt: skip


def test_real_beam_options_of_every_runner_pass_ib_ingest(tmp_path, caplog):
    from apache_beam.options.pipeline_options import PipelineOptions

    parser = ingest.build_parser()
    for flags in [*_cluster_flags(tmp_path), *REAL_FLAG_SETS]:
        _args, beam = parser.parse_known_args([*INGEST, *flags])
        assert beam, flags
        check_beam_options(parser, beam)  # raises CommandError if refused
        with caplog.at_level(logging.WARNING):
            PipelineOptions(beam).get_all_options()  # and Beam itself takes them all
        assert "Discarding" not in caplog.text, flags
    args, beam = parser.parse_known_args([*INGEST, *_cluster_flags(tmp_path)[0]])
    assert args.runner_metrics_url == "http://localhost:9" and "--runner-metrics-url" not in beam


def test_real_beam_options_of_every_runner_pass_ib_tag(tmp_path):
    """ib-tag takes ib-runner's line as printed, and reads its --runner-metrics-url."""
    parser = tag.build_parser()
    for flags in [*_cluster_flags(tmp_path), *REAL_FLAG_SETS]:
        _args, beam = parser.parse_known_args([*TAG, *flags])
        assert beam, flags
        check_beam_options(parser, beam)
    args, beam = parser.parse_known_args([*TAG, *_cluster_flags(tmp_path)[0]])
    assert args.runner_metrics_url == "http://localhost:9" and "--runner-metrics-url" not in beam


def test_runner_options_are_all_known():
    known = beam_flags()
    for flag in ("--runner", "--flink_master", "--parallelism", "--spark_master_url",
                 "--environment_type", "--environment_config", "--job_endpoint",
                 "--artifact_endpoint", "--files_to_stage", "--direct_running_mode",
                 "--job_name", "--temp_location", "--sdk_location", "--project", "--region",
                 "--prism_location", "--experiments", "--no_use_public_ips"):  # fmt: skip
        assert flag in known, flag
    assert known["--streaming"] == 0 and known["--temp_location"] is None


@pytest.mark.parametrize(
    ("beam", "expected"),
    [
        (["--save_main_session", "-x"], "unknown option -x"),  # no value: -x is a flag
        (["--streaming", "--segment-secnds"], "unknown option --segment-secnds"),
        (["stray"], "unexpected argument 'stray'"),
        (["--job_name", "a", "b"], "unexpected argument 'b'"),
    ],
)
def test_a_value_belongs_to_the_flag_before_only_if_it_takes_one(beam, expected):
    with pytest.raises(CommandError, match="^" + expected.replace("(", r"\(")):
        check_beam_options(ingest.build_parser(), beam)
    check_beam_options(ingest.build_parser(), ["--job_name", "-x", "--temp_location", "--y"])


def test_help_says_what_happens_to_other_flags():
    for module in (ingest, tag):
        text = " ".join(module.build_parser().format_help().split())
        assert "Beam's options (--runner, ...) are passed on; anything else is an error" in text
