"""``ib-vectorizer bench``: its pieces, and one small real run against the tiny model."""

from __future__ import annotations

import argparse
import io
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from ib_vectorizer.bench import add_bench_parser
from ib_vectorizer.bench.command import run_bench
from ib_vectorizer.bench.driver import (
    Budget,
    RequestPicker,
    Sample,
    check_answer,
    mix_name,
    parse_mix,
)
from ib_vectorizer.bench.payloads import make_pool, request_body
from ib_vectorizer.bench.report import percentile, summarize
from ib_vectorizer.modalities import Modality
from ib_vectorizer.preprocess import Preprocessor
from ib_vectorizer.server_process import http_status
from ib_vectorizer.serving.protocol import WIRE_NAME

from .fixture_data import FIXTURE

ROOT = Path(__file__).resolve().parent.parent  # where ``python -m benchmarks.<name>`` runs


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_bench_parser(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(["bench", *argv])


# ------------------------------------------------------------------ mix


def test_parse_mix_reads_weights_and_bare_names():
    assert parse_mix("image=1") == {"image": 1.0}
    assert parse_mix("audio=1, text=2.5") == {"audio": 1.0, "text": 2.5}
    assert parse_mix("image") == {"image": 1.0}
    assert parse_mix("vision=3,imu=0") == {"image": 3.0}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("pictures=1", "unknown modality"),
        ("image=1,image=2", "twice"),
        ("image=x", "not a number"),
        ("image=-1", ">= 0"),
        ("image=nan", ">= 0"),
        ("image=0", "positive weight"),
    ],
)
def test_parse_mix_rejects_bad_mixes(text, message):
    with pytest.raises(ValueError, match=message):
        parse_mix(text)


def test_mix_name_round_trips():
    mix = parse_mix("audio=1,text=0.5")
    assert mix_name(mix) == "audio=1,text=0.5"
    assert parse_mix(mix_name(mix)) == mix


def test_mix_flag_appends_scenarios_and_reports_bad_ones(capsys):
    args = parse("--mix", "image=1", "--mix", "audio=1,text=1")
    assert args.mix == [{"image": 1.0}, {"audio": 1.0, "text": 1.0}]
    assert parse().mix is None  # bench() then uses image=1
    with pytest.raises(SystemExit):
        parse("--mix", "smell=1")
    assert "unknown modality 'smell'" in capsys.readouterr().err


def test_image_size_flag_reads_width_by_height(capsys):
    assert parse().image_size == (640, 480)
    assert parse("--image-size", "4000x3000").image_size == (4000, 3000)
    with pytest.raises(SystemExit):
        parse("--image-size", "12MP")
    assert "expected WIDTHxHEIGHT" in capsys.readouterr().err


# ------------------------------------------------------------------ payloads


@pytest.mark.parametrize("kind", [m.label for m in Modality])
def test_payloads_decode_and_are_distinct_and_deterministic(kind):
    pool = make_pool(kind, count=2, seed=3)
    assert len(set(pool)) == 2
    assert pool == make_pool(kind, count=2, seed=3)
    for item in pool:
        Preprocessor().load_item(Modality.parse(kind), item)  # InputError if undecodable
    body = json.loads(request_body(kind, pool[0]))
    key = WIRE_NAME[Modality.parse(kind)]
    assert list(body) == [key] and len(body[key]) == 1


def test_payload_shapes_match_the_brief():
    from PIL import Image

    image = Image.open(io.BytesIO(make_pool("image", 1)[0]))
    assert (image.format, image.size, image.mode) == ("JPEG", (640, 480), "RGB")
    depth = Image.open(io.BytesIO(make_pool("depth", 1)[0]))
    assert (depth.format, depth.size, depth.mode) == ("PNG", (320, 240), "L")
    rows = make_pool("imu", 1)[0].decode().splitlines()
    assert rows[0] == "gyro_x,gyro_y,gyro_z,accl_x,accl_y,accl_z" and len(rows) == 2001
    audio = make_pool("audio", 1)[0]
    assert audio[:4] == b"RIFF" and len(audio) == 44 + 5 * 16_000 * 2


def test_image_payloads_come_at_the_size_asked_for():
    from PIL import Image

    photo = Image.open(io.BytesIO(make_pool("image", 1, image_size=(1600, 1200))[0]))
    assert photo.size == (1600, 1200)
    assert make_pool("text", 1, image_size=(1600, 1200)) == make_pool("text", 1)


# ------------------------------------------------------------------ load and statistics


def test_picker_is_seeded_and_follows_the_mix():
    bodies = {"audio": [b"a0", b"a1"], "text": [b"t0"]}
    picker = RequestPicker({"audio": 3, "text": 1}, bodies, seed=7)
    again = RequestPicker({"audio": 3, "text": 1}, bodies, seed=7)
    first = [picker.next() for _ in range(400)]
    assert first == [again.next() for _ in range(400)]
    share = sum(kind == "audio" for kind, _ in first) / len(first)
    assert 0.65 < share < 0.85
    assert {body for kind, body in first if kind == "audio"} == {b"a0", b"a1"}


def test_budget_counts_requests():
    budget = Budget(requests=3, duration_s=None)
    assert [budget.take() for _ in range(5)] == [True, True, True, False, False]
    assert not Budget(requests=None, duration_s=0.0).take()


def test_percentile_matches_numpy():
    values = sorted(np.random.default_rng(0).exponential(size=101).tolist())
    for q in (0, 50, 90, 99, 100):
        assert math.isclose(percentile(values, q), float(np.percentile(values, q)))
    assert percentile([4.0], 99) == 4.0


def test_summarize_counts_errors_apart_from_latencies():
    samples = [Sample(0.010, 200), Sample(0.020, 200), Sample(5.0, 503, "HTTP 503: busy")]
    result = summarize(samples, wall_s=2.0)
    assert result["requests"] == 3 and result["errors"] == 1
    assert result["throughput"] == 1.0  # answered items per second
    assert result["p50_ms"] == 15.0 and result["max_ms"] == 20.0
    assert result["error_samples"] == ["HTTP 503: busy"]
    empty = summarize([Sample(1.0, 0, "refused")], wall_s=1.0)
    assert empty["throughput"] == 0.0 and empty["p99_ms"] is None


def test_check_answer_wants_one_vector_under_the_right_key():
    assert check_answer("image", 200, b'{"imageVectors": [[0.1, 0.2]]}') is None
    assert "textVectors" in check_answer("text", 200, b'{"imageVectors": [[0.1]]}')
    assert "one vector" in check_answer("image", 200, b'{"imageVectors": []}')
    assert check_answer("image", 503, b'{"error": "busy"}').startswith("HTTP 503")


def test_bad_settings_fail_with_a_message(capsys):
    assert run_bench(parse("--concurrency", "0")) == 1
    assert "--concurrency" in capsys.readouterr().err
    assert run_bench(parse("--baseline-url", "http://127.0.0.1:1")) == 1
    assert "needs --url" in capsys.readouterr().err


# ------------------------------------------------------------------ end to end

TINY = ["--model", str(FIXTURE / "config.json"), "--checkpoint", str(FIXTURE / "state_dict.pt")]


def test_bench_measures_batched_and_baseline(tmp_path, capsys):
    out = tmp_path / "out.json"
    args = parse(
        *TINY,
        "--concurrency", "4", "--requests", "16", "--warmup-requests", "4",
        "--mix", "image=1", "--mix", "audio=1,text=1",
        "--startup-timeout", "120", "--json", str(out),
    )  # fmt: skip
    status = run_bench(args)
    printed = capsys.readouterr()
    assert status == 0, printed.err
    report = json.loads(out.read_text())
    assert [s["name"] for s in report["scenarios"]] == ["image=1", "audio=1,text=1"]
    for scenario in report["scenarios"]:
        assert set(scenario["results"]) == {"batched", "baseline"}
        for result in scenario["results"].values():
            assert result["requests"] == 16 and result["errors"] == 0
            assert result["throughput"] > 0
            assert 0 < result["p50_ms"] <= result["p99_ms"]
        assert scenario["speedup"] > 0
    assert printed.out.count("speedup (batched/baseline): ") == 2
    assert "x throughput, p99 batched/baseline: " in printed.out
    assert printed.out.startswith("machine: ")
    # both servers were stopped: nothing answers on their ports any more
    for server in report["servers"].values():
        assert http_status(server["url"] + "/.well-known/live") is None


def test_bench_reports_a_server_that_cannot_start(tmp_path, capsys):
    missing = tmp_path / "no-such-model.json"
    args = parse(
        "--model", str(missing), "--random-weights", "--requests", "1", "--startup-timeout", "120"
    )
    assert run_bench(args) == 1
    err = capsys.readouterr().err
    assert "the batched server exited with status" in err
    assert "no-such-model" in err  # the server's own error, from its output


def test_decode_benchmark_prints_both_modes_and_their_difference():
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.photo_decode", "--megapixels", "2", "--repeats", "1"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    (row,) = [line for line in result.stdout.splitlines() if line.startswith("| 1632×1224")]
    cells = [cell.strip() for cell in row.strip("|").split("|")]
    assert float(cells[1]) > 0 and float(cells[2]) > 0 and cells[3].endswith("×")
    mean, rms, worst = (float(x) for x in cells[4].split(" / "))
    assert 0 < mean <= rms <= worst


def test_model_benchmark_prints_float32_and_int8_for_every_modality():
    result = subprocess.run(
        [
            sys.executable, "-m", "benchmarks.model_int8",
            "--model", str(FIXTURE / "config.json"),
            "--threads", "1", "--items", "1", "--repeats", "1",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    rows = [line for line in result.stdout.splitlines() if line.startswith("| 1 |")]
    labels = [row.strip("|").split("|")[1].strip() for row in rows]
    assert labels == ["image", "text", "audio", "video", "depth", "thermal", "imu"]
    for row in rows:
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        assert float(cells[2].replace(",", "")) > 0 and float(cells[3].replace(",", "")) > 0
        assert cells[4].endswith("×")
        assert 0.998 <= float(cells[5]) <= 1.0


def test_reference_server_builds_the_containers_model_with_our_weights(tmp_path, monkeypatch):
    # A stand-in for Meta's module: the container calls imagebind_huge(pretrained=True).
    models = tmp_path / "ImageBind" / "models"
    models.mkdir(parents=True)
    (tmp_path / "ImageBind" / "__init__.py").write_text("")
    (models / "__init__.py").write_text("")
    (models / "imagebind_model.py").write_text(
        "import torch\n"
        "class ImageBindModel(torch.nn.Module):\n"
        "    def __init__(self, out_embed_dim=1024, vision_embed_dim=1280):\n"
        "        super().__init__()\n"
        "        self.head = torch.nn.Linear(vision_embed_dim, out_embed_dim)\n"
        "def imagebind_huge(pretrained=False):\n"
        "    raise RuntimeError('would download Meta weights')\n"
    )
    weights = {"head.weight": torch.full((32, 64), 0.5), "head.bias": torch.zeros(32)}
    torch.save(weights, tmp_path / "weights.pt")
    monkeypatch.setattr(sys, "path", list(sys.path))
    for name in [n for n in sys.modules if n.startswith("ImageBind")]:
        monkeypatch.delitem(sys.modules, name)

    from benchmarks.reference_server import patch_weights
    from ib_vectorizer.model import get_config

    patch_weights(tmp_path, get_config(FIXTURE / "config.json"), tmp_path / "weights.pt")
    module = sys.modules["ImageBind.models.imagebind_model"]
    model = module.imagebind_huge(pretrained=True)  # the fixture's sizes, our weights
    assert model.head.weight.shape == (32, 64)
    assert torch.equal(model.head.weight, weights["head.weight"])
    for name in [n for n in sys.modules if n.startswith("ImageBind")]:
        del sys.modules[name]


def test_reference_server_says_what_the_app_directory_lacks(tmp_path):
    from benchmarks.reference_server import main

    with pytest.raises(SystemExit, match=r"no app\.py in it"):
        main(["--app", str(tmp_path), "--model", "imagebind_huge", "--checkpoint", "w.pt"])
