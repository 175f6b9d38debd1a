"""benchmarks/gpu_check.sh: its dry run works end to end, and its FLOP counts hold.

The GPU machine is lent for minutes, so the check that runs there is tried
here first: ``--dry-run`` runs every step (parity, model throughput, compiled
throughput, the real server under load) with the tiny model on the CPU.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import torch

from benchmarks.gpu_check.flops import item_flops, view_flops
from benchmarks.gpu_check.plan import dry_plan
from benchmarks.gpu_check.report import markdown
from benchmarks.gpu_check.weights import init_on_device, random_model, save_checkpoint
from ib_vectorizer.embedder import Embedder
from ib_vectorizer.modalities import Modality
from ib_vectorizer.model import build_model, create_model, get_config
from ib_vectorizer.model.factory import init_random_weights

from .fixture_data import FIXTURE

ROOT = Path(__file__).resolve().parent.parent
MARKER = "IB_GPU_CHECK_TEST_RUN"


def test_vision_tower_of_imagebind_huge_is_334_gflop_per_image():
    config = get_config("imagebind_huge")
    gflop = view_flops(config, "vision") / 1e9
    assert abs(gflop - 334) / 334 < 0.05, gflop
    # A video item: 15 two-frame clips, each through the 3-D stem (twice the 2-D one's work).
    assert item_flops(config, Modality.VIDEO) > 15 * view_flops(config, "vision")


def test_random_weights_drawn_on_the_device_follow_the_factory_rule(tmp_path):
    model = random_model(str(FIXTURE / "config.json"), "cpu", seed=3)
    params = dict(model.named_parameters())
    factory = build_model(get_config(FIXTURE / "config.json"))
    init_random_weights(factory, seed=3)

    def kind(tensor: torch.Tensor) -> str:
        return "ones" if bool((tensor == 1).all()) else "zeros" if not tensor.any() else "random"

    assert {n: kind(p) for n, p in params.items()} == {
        n: kind(p) for n, p in factory.named_parameters()
    }
    weight = params["modality_trunks.vision.blocks.0.mlp.fc1.weight"]
    assert abs(weight.std().item() - 0.02) < 0.002
    again = random_model(str(FIXTURE / "config.json"), "cpu", seed=0)
    head = "modality_heads.vision.2.weight"
    assert not torch.equal(dict(again.named_parameters())[head], params[head])
    init_on_device(again, seed=3)
    assert torch.equal(dict(again.named_parameters())[head], params[head])
    # The server loads them from the checkpoint the run writes.
    path = tmp_path / "weights.pt"
    save_checkpoint(model, path, torch.float32)
    loaded = create_model(FIXTURE / "config.json", checkpoint=path)
    images = torch.randn(2, 3, 224, 224)
    assert torch.allclose(
        Embedder(model).embed_tensors("vision", images),
        Embedder(loaded).embed_tensors("vision", images),
    )


def test_markdown_of_a_run_stopped_after_setup():
    text = markdown({"mode": "gpu", "steps": {"setup": {"status": "done", "seconds": 3.0}}})
    assert "| setup | done | 3.0 |" in text
    assert text.count("Not measured.") == 5


def _marked_processes(marker: str) -> list[int]:
    """Processes whose environment holds ``marker``: the run's children and theirs."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if marker.encode() in environ:
            found.append(int(entry.name))
    return found


def _finite(value: object) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory) -> tuple[subprocess.CompletedProcess, Path, str]:
    out = tmp_path_factory.mktemp("gpu-check")
    marker = f"{MARKER}={uuid.uuid4().hex}"
    env = {**os.environ, "PYTHON": sys.executable, MARKER: marker.split("=", 1)[1]}
    finished = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), str(out), "--dry-run"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    return finished, out, marker


def test_dry_run_measures_every_step_for_every_modality(dry_run):
    finished, out, _ = dry_run
    assert finished.returncode == 0, finished.stdout[-3000:] + finished.stderr[-3000:]
    data = json.loads((out / "gpu_check.json").read_text())
    assert data["finished"] and data["mode"] == "dry-run"
    steps = data["steps"]
    assert {name: steps[name]["status"] for name in steps} == dict.fromkeys(
        ("setup", "parity", "model", "compiled", "server"), "done"
    )
    plan = dry_plan()
    for modality in Modality:
        name = modality.value
        parity = steps["parity"]["modalities"][name]
        for kind in ("float16", "bfloat16", "device"):
            assert _finite(parity[kind]["min"]) and parity[kind]["min"] >= 0.99, (name, kind)
        assert parity["device"]["min"] > 0.9999  # float32 against float32
        for step in ("model", "compiled"):
            found = steps[step]["modalities"][name]
            points = found["points"] if step == "compiled" else found
            assert [p["batch"] for p in points] and all(
                _finite(p["items_per_s"]) and _finite(p["ms_per_batch"]) and _finite(p["tflops"])
                for p in points
            ), (step, name, points)
            assert sorted(p["batch"] for p in points) == sorted(plan.batches(modality))
        scenarios = steps["server"]["scenarios"][name]
        assert [s["clients"] for s in scenarios] == list(plan.concurrency)
        for scenario in scenarios:
            assert scenario["errors"] == 0, scenario
            assert _finite(scenario["items_per_s"]) and scenario["items_per_s"] > 0
            assert _finite(scenario["p99_ms"]) and _finite(scenario["model_ms_per_item"])
            assert scenario["limited_by"]
    assert steps["compiled"]["stopped"] is None
    assert data["elapsed_s"] < plan.total_s


def test_dry_run_writes_the_tables(dry_run):
    _, out, _ = dry_run
    text = (out / "gpu_check.md").read_text()
    for heading in (
        "## Parity",
        "## Model throughput",
        "## Vision tower: achieved TFLOP/s",
        "## Compile",
        "## Server",
    ):
        assert heading in text
    assert "| modality | items | float16 vs float32 |" in text
    assert "| modality | batch | eager items/s |" in text
    assert "| modality | clients | items/s | p50 ms | p99 ms |" in text
    assert "Not measured." not in text


def test_dry_run_leaves_no_process_behind(dry_run):
    _, _, marker = dry_run
    deadline = time.monotonic() + 20
    while (left := _marked_processes(marker)) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert left == []
