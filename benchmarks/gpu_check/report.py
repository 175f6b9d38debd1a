"""The run's results: ``gpu_check.json`` (everything measured) and ``gpu_check.md`` (tables).

Both are rewritten after every step and after every measured point within a
step, so a run killed at its time limit still leaves what it got. The
Markdown is rendered from the JSON alone (:func:`markdown`), so a JSON file
brought back from the GPU machine can be turned into tables again here.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from ib_vectorizer.modalities import Modality

from .plan import STEPS

JSON_NAME = "gpu_check.json"
MARKDOWN_NAME = "gpu_check.md"


def machine() -> dict[str, Any]:
    """What the figures were measured on: GPU, driver, torch, CUDA, CPU, cores, memory."""
    import torch

    from ib_vectorizer.bench.report import cpu_model

    info: dict[str, Any] = {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "gpu": None,
        "driver": None,
    }
    if torch.cuda.is_available():
        properties = torch.cuda.get_device_properties(0)
        info["gpu"] = properties.name
        info["gpu_memory_gib"] = round(properties.total_memory / 2**30, 1)
        info["multiprocessors"] = properties.multi_processor_count
        info["driver"] = _driver_version()
    return info


def _driver_version() -> str | None:
    try:
        found = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return found.stdout.strip().splitlines()[0] if found.stdout.strip() else None


def finite(value: Any) -> Any:
    """``value`` with NaN and infinities as None: JSON has no spelling for them, and a
    half-precision overflow must not cost the run its report."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite(v) for v in value]
    return value


class Report:
    """The JSON document of one run, saved (with its Markdown) whenever asked."""

    def __init__(self, out_dir: Path, data: dict[str, Any]) -> None:
        self.out_dir = out_dir
        self.data = data
        self.data.setdefault("steps", {})
        out_dir.mkdir(parents=True, exist_ok=True)

    def step(self, name: str) -> dict[str, Any]:
        """The entry of step ``name``, created as running."""
        entry: dict[str, Any] = {"status": "running"}
        self.data["steps"][name] = entry
        return entry

    def save(self) -> None:
        """Both files, each replaced whole so a reader never sees half of one."""
        for name, text in (
            (JSON_NAME, json.dumps(finite(self.data), indent=1, allow_nan=False) + "\n"),
            (MARKDOWN_NAME, markdown(self.data)),
        ):
            temporary = self.out_dir / (name + ".tmp")
            temporary.write_text(text)
            temporary.replace(self.out_dir / name)


# ----------------------------------------------------------------------------- Markdown


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return str(value)


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def _points(entry: dict[str, Any] | None, modality: str) -> dict[int, dict[str, Any]]:
    """A step's measured points of one modality, by batch size."""
    if not entry:
        return {}
    found = entry.get("modalities", {}).get(modality, [])
    points = found.get("points", []) if isinstance(found, dict) else found
    return {p["batch"]: p for p in points if "items_per_s" in p}


def markdown(data: dict[str, Any]) -> str:
    """The run as Markdown tables, from its JSON alone."""
    steps = data.get("steps", {})
    machine_info = data.get("machine", {})
    plan = data.get("plan", {})
    where = machine_info.get("gpu") or "CPU (dry run)"
    lines = [f"# GPU check: {where}", ""]
    lines.append(
        f"Machine: {machine_info.get('cpu')}, {machine_info.get('cores')} cores, "
        f"{machine_info.get('memory_gib')} GiB; GPU {machine_info.get('gpu') or 'none'}, "
        f"driver {machine_info.get('driver') or '–'}; torch {machine_info.get('torch')}, "
        f"CUDA {machine_info.get('cuda') or '–'}. Model {Path(str(plan.get('model'))).name}, "
        f"{plan.get('dtype')} on {plan.get('device')}; run {data.get('mode')}, "
        f"{_fmt(data.get('elapsed_s'))} s{'' if data.get('finished') else ' (unfinished)'}."
    )
    lines.append("")
    for note in plan.get("notes", []):
        lines.append(f"- {note}")
    lines.append("")
    lines += ["## Steps", ""]
    lines += _table(
        ["step", "status", "seconds"],
        [
            [name, str(steps[name].get("status")), _fmt(steps[name].get("seconds"))]
            for name in STEPS
            if name in steps
        ],
    )
    lines += ["", *_parity(steps.get("parity"))]
    lines += ["", *_throughput(data)]
    lines += ["", *_vision(data)]
    lines += ["", *_compile(steps.get("compiled"))]
    lines += ["", *_server(steps.get("server"))]
    return "\n".join(lines).rstrip() + "\n"


def _parity(entry: dict[str, Any] | None) -> list[str]:
    lines = ["## Parity", ""]
    if not entry or "modalities" not in entry:
        return [*lines, "Not measured."]
    lines.append(
        "Smallest cosine between each item's vectors (mean in brackets); the "
        f"float32 reference runs on {entry.get('device')} and is compared with "
        f"float32 on {entry.get('reference_device')}."
    )
    lines.append("")
    rows = []
    for modality in Modality:
        found = entry["modalities"].get(modality.value)
        if not found:
            continue
        cells = [modality.value, str(found.get("items"))]
        for key in ("float16", "bfloat16", "device"):
            pair = found.get(key)
            cells.append(
                f"{pair['min']:.6f} ({pair['mean']:.6f})" if pair and "min" in pair else "–"
            )
        rows.append(cells)
    lines += _table(
        [
            "modality",
            "items",
            "float16 vs float32",
            "bfloat16 vs float32",
            "float32 vs float32 on the reference device",
        ],
        rows,
    )
    return lines


def _throughput(data: dict[str, Any]) -> list[str]:
    steps = data.get("steps", {})
    eager, compiled = steps.get("model"), steps.get("compiled")
    dtype = data.get("plan", {}).get("dtype")
    lines = [f"## Model throughput ({dtype}, preprocessed inputs on the device)", ""]
    if not eager or "modalities" not in eager:
        return [*lines, "Not measured."]
    gflop = data.get("gflop_per_item", {})
    lines.append(
        "Items per second of the model alone; ms per batch and memory are eager's; "
        "compiled: the trunks through torch.compile (dynamic shapes)."
    )
    lines.append("")
    rows = []
    for modality in Modality:
        eager_points = _points(eager, modality.value)
        compiled_points = _points(compiled, modality.value)
        for batch in sorted(set(eager_points) | set(compiled_points)):
            e, c = eager_points.get(batch, {}), compiled_points.get(batch, {})
            speedup = (
                c["items_per_s"] / e["items_per_s"]
                if c.get("items_per_s") and e.get("items_per_s")
                else None
            )
            rows.append(
                [
                    modality.value,
                    str(batch),
                    _fmt(e.get("items_per_s")),
                    _fmt(e.get("ms_per_batch"), 2),
                    _fmt(c.get("items_per_s")),
                    _fmt(speedup, 2),
                    _fmt(e.get("peak_mem_gib"), 2),
                    _fmt(e.get("tflops"), 1),
                    _fmt(c.get("tflops"), 1),
                ]
            )
    lines += _table(
        [
            "modality",
            "batch",
            "eager items/s",
            "eager ms/batch",
            "compiled items/s",
            "compiled/eager",
            "peak GiB",
            "eager TFLOP/s",
            "compiled TFLOP/s",
        ],
        rows,
    )
    lines.append("")
    lines.append(
        "GFLOP per item (from the config): "
        + ", ".join(f"{name} {value:,.2f}" for name, value in gflop.items())
        + "."
    )
    return lines


def _vision(data: dict[str, Any]) -> list[str]:
    steps = data.get("steps", {})
    eager, compiled = steps.get("model"), steps.get("compiled")
    peak = data.get("plan", {}).get("peak_tflops")
    gflop = data.get("gflop_per_item", {}).get("vision")
    lines = ["## Vision tower: achieved TFLOP/s", ""]
    if not eager or "modalities" not in eager:
        return [*lines, "Not measured."]
    peak_text = f"of the GPU's {peak:g} TFLOP/s dense float16" if peak else "(no GPU peak)"
    lines.append(f"{_fmt(gflop)} GFLOP per image (224 px), from the config; share {peak_text}.")
    lines.append("")
    e_points, c_points = _points(eager, "vision"), _points(compiled, "vision")
    rows = []
    for batch in sorted(set(e_points) | set(c_points)):
        e, c = e_points.get(batch, {}), c_points.get(batch, {})
        rows.append(
            [
                str(batch),
                _fmt(e.get("tflops")),
                _fmt(e.get("percent_of_peak")),
                _fmt(c.get("tflops")),
                _fmt(c.get("percent_of_peak")),
            ]
        )
    lines += _table(
        ["batch", "eager TFLOP/s", "eager % of peak", "compiled TFLOP/s", "compiled % of peak"],
        rows,
    )
    plain = eager.get("vision_without_autocast")
    if plain and "items_per_s" in plain:
        lines.append("")
        lines.append(
            f"Without autocast (weights' dtype throughout), batch {plain['batch']}: "
            f"{_fmt(plain['items_per_s'])} items/s, {_fmt(plain.get('tflops'))} TFLOP/s: "
            f"{_fmt(plain.get('vs_autocast'), 2)}× the autocast rate at that batch."
        )
    return lines


def _compile(entry: dict[str, Any] | None) -> list[str]:
    lines = ["## Compile", ""]
    if not entry or "modalities" not in entry:
        return [*lines, entry.get("error", "Not measured.") if entry else "Not measured."]
    lines.append(
        f"Backend {entry.get('backend')}; worker loaded the model in "
        f"{_fmt(entry.get('load_s'))} s. Compile time: the first call's excess "
        "over a steady call (batch 1 is a second graph: size 1 is specialised)."
    )
    if entry.get("stopped"):
        lines.append(f"Stopped early: {entry['stopped']}.")
    lines.append("")
    rows = []
    for modality in Modality:
        found = entry["modalities"].get(modality.value)
        if found is None:
            rows.append([modality.value, "not reached", "–"])
            continue
        status = str(found.get("status"))
        if found.get("reuses"):
            status += f" ({found['reuses']})"
        rows.append([modality.value, status, _fmt(found.get("compile_s"))])
    lines += _table(["modality", "status", "compile s"], rows)
    return lines


def _server(entry: dict[str, Any] | None) -> list[str]:
    lines = ["## Server", ""]
    if not entry or "scenarios" not in entry:
        return [*lines, entry.get("error", "Not measured.") if entry else "Not measured."]
    settings = entry.get("settings", {})
    shown = ("IB_DEVICE", "IB_DTYPE", "IB_DECODE_PROCESSES", "IB_PREPROCESS_WORKERS")
    lines.append(
        "`ib-vectorizer serve` ("
        + ", ".join(f"{k}={settings[k]}" for k in (*shown, "IB_MAX_BATCH") if k in settings)
        + f"), ready in {_fmt(entry.get('startup_s'))} s, driven by `ib-vectorizer bench` "
        "(one item per request). Capacities are items/s a stage could sustain, from the "
        "server's /metrics; model-only: the model step's rate at the server's mean batch."
    )
    lines.append("")
    rows = []
    for modality in Modality:
        for record in entry["scenarios"].get(modality.value, []):
            rows.append(
                [
                    modality.value,
                    str(record["clients"]),
                    _fmt(record.get("items_per_s")),
                    _fmt(record.get("p50_ms")),
                    _fmt(record.get("p99_ms")),
                    f"{record.get('errors')}/{record.get('requests')}",
                    _fmt(record.get("decode_ms_per_item"), 2),
                    _fmt(record.get("model_ms_per_item"), 2),
                    _fmt(record.get("mean_batch_items")),
                    _fmt(record.get("decode_capacity")),
                    _fmt(record.get("model_capacity")),
                    _fmt(record.get("model_only_items_per_s")),
                    str(record.get("limited_by")),
                ]
            )
    for run in entry.get("load_runs", []):
        lines.append(
            f"Load run with {run['clients']} clients: {_fmt(run.get('seconds'))} s, "
            f"load generator at {_fmt(run.get('load_generator_cores'), 2)} cores "
            f"(one asyncio process: near 1.0, it may be the limit), "
            f"exit status {run.get('exit_status')}."
        )
        lines.append("")
    lines += _table(
        [
            "modality",
            "clients",
            "items/s",
            "p50 ms",
            "p99 ms",
            "errors",
            "decode ms/item",
            "model ms/item",
            "mean batch",
            "decode capacity",
            "model capacity",
            "model-only items/s",
            "limited by",
        ],
        rows,
    )
    return lines
