"""What a benchmark measured, as numbers and as the lines it prints.

Throughput and latency percentiles of one run, the batched/baseline ratios,
and the machine they were measured on, since a published figure must name its
machine. Kept apart from the driver so that other benchmarks print the same
``machine:`` line and the same statistics.

torch is imported only by :func:`machine_info`, where it is needed.
"""

from __future__ import annotations

import contextlib
import math
import os
import platform
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .driver import Sample

ERROR_SAMPLES = 5  # distinct error messages kept (and printed) per run

# ----------------------------------------------------------------------------- statistics


def percentile(sorted_values: list[float], q: float) -> float:
    """The q-th percentile (0-100), interpolating linearly as numpy's default does."""
    position = (len(sorted_values) - 1) * q / 100.0
    low = math.floor(position)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (position - low)


def summarize(samples: list[Sample], wall_s: float) -> dict[str, Any]:
    """Counts, throughput (answered items per second) and latency percentiles of successes."""
    ok = sorted(s.latency_s * 1000.0 for s in samples if s.error is None)
    errors = [s.error for s in samples if s.error is not None]

    def stat(q: float) -> float | None:
        return round(percentile(ok, q), 3) if ok else None

    return {
        "requests": len(samples),
        "errors": len(errors),
        "wall_s": round(wall_s, 4),
        "throughput": round(len(ok) / wall_s, 3) if wall_s > 0 else 0.0,
        "p50_ms": stat(50),
        "p90_ms": stat(90),
        "p99_ms": stat(99),
        "mean_ms": round(sum(ok) / len(ok), 3) if ok else None,
        "max_ms": round(ok[-1], 3) if ok else None,
        "error_samples": list(dict.fromkeys(errors))[:ERROR_SAMPLES],
    }


def ratios(batched: dict[str, Any], baseline: dict[str, Any]) -> dict[str, float | None]:
    """Throughput speedup and p99 ratio of batched over baseline (None where undefined)."""
    speedup = batched["throughput"] / baseline["throughput"] if baseline["throughput"] else None
    p99 = (
        batched["p99_ms"] / baseline["p99_ms"]
        if batched["p99_ms"] is not None and baseline["p99_ms"]
        else None
    )
    return {"speedup": speedup, "p99_ratio": p99}


def scenario_report(
    name: str, mix: dict[str, float], results: dict[str, dict[str, Any]]
) -> dict[str, Any]:
    """One scenario's results per server, with the ratios when both modes ran."""
    scenario: dict[str, Any] = {"name": name, "mix": mix, "results": results}
    if "batched" in results and "baseline" in results:
        scenario.update(ratios(results["batched"], results["baseline"]))
    return scenario


# -------------------------------------------------------------------------------- lines


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} ms"


def result_line(label: str, result: dict[str, Any]) -> str:
    """One server's figures for one scenario, aligned with the other servers' lines."""
    return (
        f"  {label:<9} requests {result['requests']:>6}  errors {result['errors']:>4}  "
        f"throughput {result['throughput']:>8.2f} items/s  "
        f"p50 {_ms(result['p50_ms']):>10}  p99 {_ms(result['p99_ms']):>10}"
    )


def ratio_line(ratio: dict[str, float | None]) -> str:
    def x(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.2f}x"

    return (
        f"  speedup (batched/baseline): {x(ratio['speedup'])} throughput, "
        f"p99 batched/baseline: {x(ratio['p99_ratio'])}"
    )


def server_line(label: str, url: str, meta: dict[str, Any]) -> str:
    """The settings a server reports in /meta, so the figures say what was measured."""
    shown = {
        "mode": meta.get("mode"),
        "devices": ",".join(meta["devices"]) if isinstance(meta.get("devices"), list) else None,
        "dtype": meta.get("dtype"),
        "max batch views": meta.get("maxBatchViews"),
    }
    details = ", ".join(f"{name} {value}" for name, value in shown.items() if value is not None)
    return f"[{label}] {url}" + (f" ({details})" if details else "")


def print_summary(report: dict[str, Any]) -> None:
    """Every scenario's lines together, after a blank line, once all have run."""
    print()
    for scenario in report["scenarios"]:
        print(f"scenario {scenario['name']}:")
        for label, result in scenario["results"].items():
            print(result_line(label, result))
        if "speedup" in scenario:
            print(ratio_line(scenario))
    sys.stdout.flush()


# ------------------------------------------------------------------------------ machine


def cpu_model() -> str:
    """The CPU's marketing name (``/proc/cpuinfo``), else what ``platform`` knows."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def machine_info(device: str | None) -> dict[str, Any]:
    """What the figures were measured on; no ``device`` means CUDA when present, else the CPU."""
    import torch

    cuda = torch.cuda.is_available()
    device = device or ("cuda" if cuda else "cpu")
    gpu = None
    if cuda and device.startswith("cuda"):
        index = int(device.split(":")[1]) if ":" in device else 0
        gpu = torch.cuda.get_device_name(index)
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "device": device,
        "gpu": gpu,
    }


def machine_line(machine: dict[str, Any]) -> str:
    """``machine: CPU, N cores, torch X, device D[, GPU G]`` from :func:`machine_info`."""
    gpu = f", GPU {machine['gpu']}" if machine["gpu"] else ""
    return (
        f"machine: {machine['cpu']}, {machine['cores']} cores, torch {machine['torch']}, "
        f"device {machine['device']}{gpu}"
    )
