"""The run: setup, parity, model throughput, compiled throughput, server throughput.

Each step records into its entry of the report and the report is saved as
the step goes, so a run stopped at its limit still brings its figures back.
A step that fails is recorded with its error and the next steps still run
(those that need what it made are skipped).
"""

from __future__ import annotations

import gc
import json
import os
import shutil
import signal
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from ib_vectorizer.embedder import Embedder, NonFiniteVectors
from ib_vectorizer.modalities import Modality
from ib_vectorizer.model import ImageBind, get_config

from .flops import flops_table
from .inputs import batch_of, cosines, preprocessed
from .plan import STEPS, Clock, Plan, dry_plan, gpu_plan, progress
from .report import Report, machine
from .serving import run_server_step
from .throughput import (
    compile_spec,
    measure_modality,
    model_call,
    point_record,
    run_compile_worker,
)
from .timing import measure
from .weights import clone, reference_model, save_checkpoint

# What the server step needs at least, kept back from the compile step's budget.
SERVER_FLOOR_S = {"gpu": 150.0, "dry-run": 50.0}


@dataclass
class State:
    """What one step makes for the next ones."""

    workdir: Path
    model32: ImageBind | None = None  # the float32 reference, on the run's device
    inputs: dict[Modality, torch.Tensor] = field(default_factory=dict)
    checkpoint: Path | None = None  # the weights the compile worker and the server load
    inputs_file: Path | None = None
    model_points: dict[str, list[dict[str, Any]]] = field(default_factory=dict)


def free_memory() -> None:
    """Give the memory of dropped models back (the allocator keeps GPU memory otherwise)."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# -------------------------------------------------------------------------------- steps


def setup(plan: Plan, state: State, entry: dict[str, Any], clock: Clock) -> None:
    """The float32 model on the device, its checkpoint for the server, the inputs."""
    started = time.perf_counter()
    state.model32 = reference_model(plan.model, plan.checkpoint, plan.device, plan.seed)
    if plan.device.startswith("cuda"):
        torch.cuda.synchronize()
    entry["model_s"] = round(time.perf_counter() - started, 3)
    entry["weights"] = (
        f"checkpoint {plan.checkpoint.name}"
        if plan.checkpoint
        else f"random (seed {plan.seed}), drawn on {plan.device}"
    )
    entry["parameters"] = sum(p.numel() for p in state.model32.parameters())
    progress(clock, f"model ready in {entry['model_s']:.1f} s ({entry['weights']})")
    state.checkpoint = state.workdir / "weights.pt"
    entry["checkpoint"] = save_checkpoint(
        state.model32, state.checkpoint, getattr(torch, plan.throughput_dtype)
    )
    progress(
        clock,
        f"checkpoint for the server: {entry['checkpoint']['bytes'] / 1e9:.2f} GB "
        f"in {entry['checkpoint']['seconds']:.1f} s",
    )
    started = time.perf_counter()
    state.inputs = preprocessed(get_config(plan.model), plan.parity_items, plan.seed)
    entry["inputs_s"] = round(time.perf_counter() - started, 3)
    entry["inputs"] = {m.value: list(t.shape) for m, t in state.inputs.items()}
    state.inputs_file = state.workdir / "inputs.pt"
    torch.save({m.value: t for m, t in state.inputs.items()}, state.inputs_file)
    progress(clock, f"inputs made and preprocessed in {entry['inputs_s']:.1f} s")


def parity(
    plan: Plan,
    state: State,
    entry: dict[str, Any],
    clock: Clock,
    save: Callable[[], None],
    deadline: float,
) -> None:
    """float16 and bfloat16 against float32 on the device; float32 against the CPU."""
    assert state.model32 is not None
    entry["device"] = plan.device
    entry["reference_device"] = "cpu"
    results: dict[str, dict[str, Any]] = {m.value: {} for m in Modality}
    entry["modalities"] = results
    reference = Embedder(state.model32)
    vectors = {m: reference.embed_tensors(m, state.inputs[m]) for m in Modality}
    for m in Modality:
        results[m.value]["items"] = int(state.inputs[m].shape[0])
    for dtype_name in plan.low_precision:
        model = clone(state.model32, plan.device, getattr(torch, dtype_name))
        embedder = Embedder(model)
        for m in Modality:
            results[m.value][dtype_name] = compare(embedder, m, state.inputs[m], vectors[m])
        progress(
            clock,
            f"parity {dtype_name}: min cosine "
            + ", ".join(f"{m.value} {results[m.value][dtype_name].get('min')}" for m in Modality),
        )
        del model, embedder
        free_memory()
        save()
    cpu = Embedder(clone(state.model32, "cpu", torch.float32))
    for m in Modality:
        if time.monotonic() > deadline:
            results[m.value]["device"] = {"skipped": "the step's time budget was spent"}
            continue
        count = 1 if m is Modality.VIDEO else plan.reference_items
        found = compare(cpu, m, state.inputs[m][:count], vectors[m][:count])
        results[m.value]["device"] = {"items": count, **found}
        progress(clock, f"parity {plan.device} vs cpu, {m.value}: min cosine {found.get('min')}")
        save()


def compare(
    embedder: Embedder, modality: Modality, inputs: torch.Tensor, reference: torch.Tensor
) -> dict[str, Any]:
    """Smallest and mean cosine of ``embedder``'s vectors against ``reference``'s; an
    overflow (no finite vector for some items) is recorded, not raised."""
    try:
        vectors = embedder.embed_tensors(modality, inputs)
    except NonFiniteVectors as err:
        return {"error": f"no finite vector for items {sorted(err.reasons)}: {err}"}
    low, mean = cosines(vectors, reference)
    return {"min": round(low, 6), "mean": round(mean, 6)}


def model_throughput(
    plan: Plan,
    state: State,
    entry: dict[str, Any],
    clock: Clock,
    save: Callable[[], None],
    deadline: float,
) -> None:
    """Items/s of the model alone per modality and batch size, eager."""
    assert state.model32 is not None
    dtype = getattr(torch, plan.throughput_dtype)
    model = clone(state.model32, plan.device, dtype)
    state.model32 = None  # the compile worker and the server load the checkpoint
    free_memory()
    gflop = flops_table(plan.model)
    entry["dtype"] = plan.throughput_dtype
    entry["modalities"] = {}
    for m in Modality:
        points: list[dict[str, Any]] = []
        entry["modalities"][m.value] = points

        def record(
            point: dict[str, Any], m: Modality = m, points: list[dict[str, Any]] = points
        ) -> None:
            points.append(point)
            if "items_per_s" in point:
                progress(
                    clock,
                    f"model {m.value} batch {point['batch']}: {point['items_per_s']:.1f} items/s, "
                    f"{point['tflops']:.1f} TFLOP/s",
                )
            save()

        measure_modality(
            model,
            m,
            state.inputs[m],
            plan.batches(m),
            plan.min_point_s,
            gflop[m.value],
            plan.peak_tflops,
            deadline,
            record,
        )
    state.model_points = entry["modalities"]
    if dtype in (torch.float16, torch.bfloat16):
        entry["vision_without_autocast"] = without_autocast(plan, model, state, gflop["vision"])
    else:
        entry["vision_without_autocast"] = {"skipped": f"{plan.throughput_dtype}: no autocast"}
    del model
    free_memory()


def without_autocast(plan: Plan, model: ImageBind, state: State, gflop: float) -> dict[str, Any]:
    """Vision at one large batch in the weights' dtype throughout, against autocast's rate:
    what autocast's float32 LayerNorms and residual stream cost."""
    batch = 128 if 128 in plan.batches(Modality.VISION) else max(plan.batches(Modality.VISION))
    base = state.inputs[Modality.VISION].to(plan.device, next(model.parameters()).dtype)
    inputs = batch_of(base, batch)
    point = measure(
        model_call(model, Modality.VISION, inputs, autocast=False),
        batch,
        inputs.device,
        plan.min_point_s,
    )
    record = point_record(point, gflop, plan.peak_tflops)
    with_autocast = {p["batch"]: p for p in state.model_points.get("vision", [])}.get(batch)
    if with_autocast and "items_per_s" in with_autocast:
        record["vs_autocast"] = round(point.items_per_s / with_autocast["items_per_s"], 3)
    return record


def compiled_throughput(
    plan: Plan, state: State, entry: dict[str, Any], clock: Clock, budget_s: float
) -> None:
    """The trunks through torch.compile, in a worker process stopped at ``budget_s``."""
    assert state.checkpoint is not None and state.inputs_file is not None
    spec = compile_spec(
        model=plan.model,
        checkpoint=state.checkpoint,
        device=plan.device,
        dtype=plan.throughput_dtype,
        inputs=state.inputs_file,
        batch_sizes=plan.batch_sizes,
        min_point_s=plan.min_point_s,
        budget_s=max(1.0, budget_s - 5.0),
        backend=plan.compile_backend,
        gflop=flops_table(plan.model),
        peak_tflops=plan.peak_tflops,
        results=state.workdir / "compiled.json",
        run_elapsed_s=clock.elapsed(),
    )
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(state.workdir / "inductor-cache")}
    progress(clock, f"compile worker started, {budget_s:.0f} s budget ({plan.compile_backend})")
    results, stopped = run_compile_worker(spec, state.workdir / "compile-spec.json", budget_s, env)
    entry.update(results)
    entry["stopped"] = stopped
    entry["budget_s"] = round(budget_s, 1)
    if not results.get("modalities"):
        raise RuntimeError(stopped or "the compile worker measured nothing")


# ---------------------------------------------------------------------------------- run


def plan_record(plan: Plan) -> dict[str, Any]:
    return {
        "model": plan.model,
        "device": plan.device,
        "dtype": plan.throughput_dtype,
        "batch_sizes": {m.value: list(s) for m, s in plan.batch_sizes.items()},
        "parity_items": plan.parity_items,
        "compile_backend": plan.compile_backend,
        "concurrency": list(plan.concurrency),
        "budgets_s": plan.budgets,
        "total_s": plan.total_s,
        "peak_tflops": plan.peak_tflops,
        "notes": plan.notes,
    }


class Interrupted(BaseException):
    """SIGTERM: the run unwinds, stopping its server and worker, and saves what it has.

    A BaseException, like KeyboardInterrupt, so that no step records it as its own
    failure and carries on.
    """


def _raise_interrupted(signum: int, frame: object) -> None:
    raise Interrupted(f"signal {signum}")


def run(out_dir: Path, dry_run: bool) -> int:
    """The whole check; 0 when every step ran, 1 when one failed, 2 without CUDA."""
    plan = dry_plan() if dry_run else gpu_plan()
    mode = "dry-run" if dry_run else "gpu"
    clock = Clock(plan.total_s)
    progress(clock, f"{mode}: model {plan.model} on {plan.device}, output in {out_dir}")
    if not dry_run and not torch.cuda.is_available():
        progress(clock, "no CUDA device: run with --dry-run, or on the GPU machine")
        return 2
    report = Report(
        out_dir,
        {
            "schema": 1,
            "mode": mode,
            "started_utc": datetime.now(UTC).isoformat(timespec="seconds"),
            "finished": False,
            "machine": machine(),
            "plan": plan_record(plan),
            "gflop_per_item": {k: round(v, 3) for k, v in flops_table(plan.model).items()},
        },
    )
    report.save()
    torch.manual_seed(plan.seed)
    state = State(workdir=Path(tempfile.mkdtemp(prefix="ib-gpu-check-")))
    later = SERVER_FLOOR_S[mode]

    def budget(name: str) -> float:
        keep = later if name == "compiled" else 0.0
        return clock.budget(plan.budgets[name], keep_for_later_s=keep)

    steps: dict[str, Callable[[dict[str, Any], float], None]] = {
        "setup": lambda entry, b: setup(plan, state, entry, clock),
        "parity": lambda entry, b: parity(
            plan, state, entry, clock, report.save, time.monotonic() + b
        ),
        "model": lambda entry, b: model_throughput(
            plan, state, entry, clock, report.save, time.monotonic() + b
        ),
        "compiled": lambda entry, b: compiled_throughput(plan, state, entry, clock, b),
        "server": lambda entry, b: run_server_step(
            plan,
            state.checkpoint,
            state.model_points,
            state.workdir,
            clock,
            b,
            entry,
            report.save,
        ),
    }
    needs = {"parity": "setup", "model": "setup", "compiled": "setup", "server": "setup"}
    previous = signal.signal(signal.SIGTERM, _raise_interrupted)
    interrupted = False
    try:
        for name in STEPS:
            entry = report.step(name)
            required = needs.get(name)
            if required and report.data["steps"][required]["status"] != "done":
                entry["status"] = f"skipped: {required} failed"
                continue
            step_budget = budget(name)
            entry["budget_s"] = round(step_budget, 1)
            progress(clock, f"step {name} (budget {step_budget:.0f} s)")
            started = time.monotonic()
            try:
                steps[name](entry, step_budget)
                entry["status"] = "done"
            except Exception as err:
                entry["status"] = "failed"
                entry["error"] = f"{type(err).__name__}: {err}"[:2000]
                traceback.print_exc()
                progress(clock, f"step {name} failed: {entry['error'][:300]}")
            entry["seconds"] = round(time.monotonic() - started, 2)
            report.save()
    except (Interrupted, KeyboardInterrupt) as err:
        interrupted = True
        for entry in report.data["steps"].values():
            if entry.get("status") == "running":
                entry["status"] = f"interrupted ({err or 'Ctrl-C'})"
    finally:
        signal.signal(signal.SIGTERM, previous)
        shutil.rmtree(state.workdir, ignore_errors=True)
        report.data["finished"] = not interrupted
        report.data["elapsed_s"] = round(clock.elapsed(), 1)
        report.save()
    statuses = {name: entry.get("status") for name, entry in report.data["steps"].items()}
    progress(clock, "done: " + json.dumps(statuses))
    progress(clock, f"wrote {out_dir / 'gpu_check.json'} and {out_dir / 'gpu_check.md'}")
    if interrupted:
        return 130
    return 0 if all(status == "done" for status in statuses.values()) else 1
