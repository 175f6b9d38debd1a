"""Model-only throughput: items/s per modality and batch size, eager and compiled.

The model runs as the server's replicas run it (:class:`~ib_vectorizer.embedder.Embedder`):
float16 weights under autocast, so LayerNorm, softmax and the output
normalisation stay in float32. Inputs are preprocessed items already on the
device, so decoding and host-to-device copies are left out: this is the
ceiling the server's model stage can reach.

``torch.compile`` runs in a child process with a hard time limit (a compile
cannot be interrupted from inside), compiling the trunks as ``IB_COMPILE``
does; vision first, then the other encoders while their estimated compile
time still fits.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ib_vectorizer.modalities import Modality
from ib_vectorizer.model import ImageBind, create_model
from ib_vectorizer.server_process import die_with_parent

from .flops import tflops
from .inputs import batch_of
from .plan import Clock, progress
from .timing import Point, measure

LOW_PRECISION = (torch.float16, torch.bfloat16)
# Vision first: images and video share its trunk, and it is where the FLOPs are.
COMPILE_ORDER = (
    Modality.VISION,
    Modality.VIDEO,
    Modality.TEXT,
    Modality.AUDIO,
    Modality.THERMAL,
    Modality.DEPTH,
    Modality.IMU,
)


def model_call(
    model: ImageBind, modality: Modality, batch: torch.Tensor, autocast: bool = True
) -> Callable[[], torch.Tensor]:
    """One forward pass as the embedder makes it; ``autocast=False`` runs the weights' dtype
    throughout (a comparison only: the product always uses autocast for float16/bfloat16)."""
    dtype = next(model.parameters()).dtype
    use_autocast = autocast and dtype in LOW_PRECISION

    def call() -> torch.Tensor:
        with torch.inference_mode():
            context = (
                torch.autocast(batch.device.type, dtype=dtype)
                if use_autocast
                else contextlib.nullcontext()
            )
            with context:
                return model.embed(modality.encoder, batch)

    return call


def device_inputs(items: torch.Tensor, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Preprocessed items on the device in the model's dtype (token ids stay integers)."""
    items = items.to(device)
    return items.to(dtype) if items.is_floating_point() else items


def point_record(point: Point, gflop: float, peak_tflops: float | None) -> dict[str, Any]:
    """A point's figures with its achieved TFLOP/s (and share of the GPU's peak)."""
    record = point.as_dict()
    achieved = tflops(point.items_per_s, gflop)
    record["tflops"] = round(achieved, 3)
    if peak_tflops:
        record["percent_of_peak"] = round(100.0 * achieved / peak_tflops, 2)
    return record


def measure_modality(
    model: ImageBind,
    modality: Modality,
    items: torch.Tensor,
    sizes: tuple[int, ...],
    min_point_s: float,
    gflop: float,
    peak_tflops: float | None,
    deadline: float,
    on_point: Callable[[dict[str, Any]], None],
) -> None:
    """Every batch size of one modality, until ``deadline`` (``time.monotonic()``).

    An out-of-memory batch is recorded and ends the larger sizes.
    """
    device = next(model.parameters()).device
    base = device_inputs(items, device, next(model.parameters()).dtype)
    for size in sizes:
        if time.monotonic() > deadline:
            on_point({"batch": size, "skipped": "the step's time budget was spent"})
            continue
        batch = batch_of(base, size)
        try:
            point = measure(model_call(model, modality, batch), size, device, min_point_s)
        except torch.OutOfMemoryError as err:
            on_point({"batch": size, "error": f"out of memory: {str(err)[:200]}"})
            break
        finally:
            del batch
            if device.type == "cuda":
                torch.cuda.empty_cache()
        on_point(point_record(point, gflop, peak_tflops))


# ---------------------------------------------------------------------------- compiled


def compile_spec(
    *,
    model: str,
    checkpoint: Path,
    device: str,
    dtype: str,
    inputs: Path,
    batch_sizes: dict[Modality, tuple[int, ...]],
    min_point_s: float,
    budget_s: float,
    backend: str,
    gflop: dict[str, float],
    peak_tflops: float | None,
    results: Path,
    run_elapsed_s: float,
) -> dict[str, Any]:
    """What the compile worker is asked to do, as JSON."""
    return {
        "model": model,
        "checkpoint": str(checkpoint),
        "device": device,
        "dtype": dtype,
        "inputs": str(inputs),
        "batch_sizes": {m.value: list(sizes) for m, sizes in batch_sizes.items()},
        "min_point_s": min_point_s,
        "budget_s": budget_s,
        "backend": backend,
        "gflop": gflop,
        "peak_tflops": peak_tflops,
        "results": str(results),
        "run_elapsed_s": run_elapsed_s,
    }


def compile_order(sizes: list[int]) -> list[int]:
    """Batch 1 last: with dynamic shapes, size 1 is specialised and compiles a second graph
    (for audio and video a batch of 1 is 3 or 15 views, so only their place changes)."""
    return [s for s in sizes if s != 1] + [s for s in sizes if s == 1]


def compile_worker(spec_path: Path) -> int:
    """The child: load the model, compile trunk after trunk, measure, write results as it goes."""
    spec = json.loads(spec_path.read_text())
    clock = Clock(spec["budget_s"], offset_s=spec["run_elapsed_s"])
    results: dict[str, Any] = {"backend": spec["backend"], "modalities": {}}
    out = Path(spec["results"])

    def save() -> None:
        temporary = out.with_suffix(".tmp")
        temporary.write_text(json.dumps(results, indent=1))
        temporary.replace(out)

    started = time.perf_counter()
    model = create_model(
        spec["model"],
        checkpoint=spec["checkpoint"],
        device=spec["device"],
        dtype=getattr(torch, spec["dtype"]),
    )
    inputs: dict[str, torch.Tensor] = torch.load(spec["inputs"], weights_only=True)
    results["load_s"] = round(time.perf_counter() - started, 3)
    progress(clock, f"compile worker: model loaded in {results['load_s']:.1f} s")
    save()
    seconds_per_block: float | None = None  # learnt from the first compile
    compiled: set[str] = set()
    for modality in COMPILE_ORDER:
        encoder = modality.encoder
        blocks = len(model.modality_trunks[encoder].blocks)
        entry: dict[str, Any] = {"encoder": encoder, "points": []}
        results["modalities"][modality.value] = entry
        sizes = compile_order(spec["batch_sizes"][modality.value])
        if encoder not in compiled:
            estimate = None if seconds_per_block is None else seconds_per_block * blocks
            # Each point measures for min_point_s a few times over; leave room for them too.
            needed = (estimate or 0.0) + 4 * spec["min_point_s"] * len(sizes)
            if estimate is not None and needed > clock.left():
                entry["status"] = (
                    f"skipped: compiling {blocks} blocks takes about {estimate:.0f} s "
                    f"and {clock.left():.0f} s were left"
                )
                progress(clock, f"compile worker: {modality.value} {entry['status']}")
                save()
                continue
        newly_compiled = encoder not in compiled
        if not newly_compiled:
            entry["reuses"] = f"{encoder}'s compiled trunk"
        else:
            model.modality_trunks[encoder].compile(dynamic=True, backend=spec["backend"])
            compiled.add(encoder)
        entry["status"] = "running"
        save()
        try:
            seconds_per_block = measure_compiled(
                model,
                modality,
                inputs,
                sizes,
                spec,
                entry,
                clock,
                seconds_per_block,
                save,
                newly_compiled,
            )
        except Exception as err:  # one encoder's failure leaves the others to measure
            entry["status"] = f"failed: {type(err).__name__}: {str(err)[:300]}"
            progress(clock, f"compile worker: {modality.value} {entry['status']}")
            save()
            continue
        entry["status"] = "done"
        save()
    return 0


def measure_compiled(
    model: ImageBind,
    modality: Modality,
    inputs: dict[str, torch.Tensor],
    sizes: list[int],
    spec: dict[str, Any],
    entry: dict[str, Any],
    clock: Clock,
    seconds_per_block: float | None,
    save: Callable[[], None],
    newly_compiled: bool,
) -> float | None:
    """One modality's points through its compiled trunk; returns the compile rate learnt.

    ``newly_compiled``: this modality's first call compiles its trunk (video reuses
    vision's), so that call's excess time is the compile time.
    """
    encoder = modality.encoder
    blocks = len(model.modality_trunks[encoder].blocks)
    device, dtype = torch.device(spec["device"]), getattr(torch, spec["dtype"])
    base = device_inputs(inputs[modality.value], device, dtype)
    for size in sizes:
        if clock.left() < 4 * spec["min_point_s"]:
            entry["points"].append({"batch": size, "skipped": "the step's time budget was spent"})
            continue
        # One view through the trunk: size 1, which dynamic shapes compile separately.
        if size * modality.views_per_item == 1 and seconds_per_block is not None:
            recompile = seconds_per_block * blocks
            if recompile + 4 * spec["min_point_s"] > clock.left():
                entry["points"].append(
                    {"batch": 1, "skipped": f"a second compile (~{recompile:.0f} s) left out"}
                )
                continue
        batch = batch_of(base, size)
        point = measure(model_call(model, modality, batch), size, device, spec["min_point_s"])
        del batch
        entry["points"].append(
            point_record(point, spec["gflop"][modality.value], spec["peak_tflops"])
        )
        if newly_compiled and "compile_s" not in entry and size != 1:
            # The first call at a new shape holds the compile, plus one call.
            compile_s = max(0.0, point.first_call_s - point.ms_per_batch / 1000.0)
            entry["compile_s"] = round(compile_s, 3)
            if seconds_per_block is None and compile_s > 0:
                seconds_per_block = compile_s / blocks
        progress(
            clock,
            f"compiled {modality.value} batch {size}: {point.items_per_s:.1f} items/s "
            f"(first call {point.first_call_s:.1f} s)",
        )
        save()
    return seconds_per_block


def run_compile_worker(
    spec: dict[str, Any], spec_path: Path, timeout_s: float, env: dict[str, str]
) -> tuple[dict[str, Any], str | None]:
    """Run the worker in its own process group; kill the group at ``timeout_s``.

    Returns what the worker wrote (however far it got) and why it stopped
    early, if it did.
    """
    spec_path.write_text(json.dumps(spec, indent=1))
    command = [sys.executable, "-m", "benchmarks.gpu_check", "--compile-worker", str(spec_path)]
    process = subprocess.Popen(command, env=env, start_new_session=True, preexec_fn=die_with_parent)
    stopped = None
    try:
        code = process.wait(timeout=timeout_s)
        if code != 0:
            stopped = f"the compile worker exited with status {code}"
    except subprocess.TimeoutExpired:
        stopped = f"the compile worker was stopped at its time limit ({timeout_s:.0f} s)"
    finally:
        # The whole group: Inductor's compile workers too, should any outlive the worker.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    results_path = Path(spec["results"])
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    return results, stopped
