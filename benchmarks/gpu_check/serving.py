"""Server throughput: ``ib-vectorizer serve`` on the device, driven by ``ib-vectorizer bench``.

The server loads the run's weights from a checkpoint file (memory-mapped) and
decodes with ``IB_DECODE_PROCESSES`` processes on the machine's cores; the
load generator runs N one-item clients per modality (Weaviate's pattern).
Which stage limits a modality comes from the server's own ``/metrics``,
scraped around each load run (each metric is labelled by modality):

* decode capacity: decoding threads ÷ mean decode time per item
  (``ib_preprocess_seconds``; for audio and video a thread's time includes
  waiting for a free decoding process, so a process pool too small shows
  as busy threads);
* model capacity: items ÷ time the replica spent in model calls
  (``ib_compute_seconds``, which holds the host-to-device copy and the checks);
* the model-only rate of the model step at the server's mean batch size.

The stage whose capacity the measured rate comes within 80 % of is the limit;
when neither does, the limit lies outside both (HTTP, the event loop, the load
generator). The load generator is one asyncio process: its CPU share per
load run (cores it kept busy) tells whether it was the limit.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
import urllib.request
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from ib_vectorizer.modalities import Modality
from ib_vectorizer.server_process import ServerProcess

from .plan import Clock, Plan, progress

BUSY = 0.8  # a stage running at this share of its capacity is the limit
# Kept from this process's environment only where set by the run itself.
UNSET = ("IB_API_KEY", "IB_DEVICES", "IB_RANDOM_WEIGHTS", "IB_COMPILE", "ENABLE_CUDA")


def decode_processes(cores: int) -> int:
    """Decoders for audio and video: every core but those of the event loop, the replica
    thread and the load generator."""
    return max(1, cores - 4)


def server_env(plan: Plan, checkpoint: Path, cores: int) -> dict[str, str]:
    """The server's settings: this run's model and weights on the device, decoding on the
    cores, batches and memory sized for many clients."""
    env = {name: "" for name in UNSET}
    env.update(
        {
            "IB_MODEL": plan.model,
            "IB_CHECKPOINT": str(checkpoint),
            "IB_DEVICE": plan.device,
            "IB_DTYPE": plan.throughput_dtype,
            "IB_DECODE_PROCESSES": str(decode_processes(cores)),
            "IB_PREPROCESS_WORKERS": str(cores),
            "IB_MAX_BATCH": str(plan.server_max_batch),
            "IB_MEMORY_BUDGET_MB": str(plan.server_memory_mb),
            "IB_MAX_QUEUE": str(4 * max(plan.concurrency)),
            "IB_REQUEST_TIMEOUT_S": "120",
            "IB_LOG_LEVEL": "WARNING",
        }
    )
    return env


def scrape(url: str) -> dict[tuple[str, str], float]:
    """``/metrics`` as (sample name, modality) → value, summed over other labels."""
    with urllib.request.urlopen(url.rstrip("/") + "/metrics", timeout=10) as response:
        text = response.read().decode("utf-8")
    values: dict[tuple[str, str], float] = defaultdict(float)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            modality = sample.labels.get("modality")
            if modality is not None and "le" not in sample.labels:
                values[(sample.name, modality)] += sample.value
    return dict(values)


def _delta(after: dict, before: dict, name: str, modality: str) -> float:
    return after.get((name, modality), 0.0) - before.get((name, modality), 0.0)


def interpolate_rate(points: list[dict[str, Any]], batch: float) -> float | None:
    """Model-only items/s at ``batch`` items, linear in time per batch between measured sizes."""
    measured = sorted(
        (p["batch"], p["ms_per_batch"]) for p in points if p.get("ms_per_batch") is not None
    )
    if not measured:
        return None
    batch = max(1.0, batch)
    below = [m for m in measured if m[0] <= batch]
    above = [m for m in measured if m[0] >= batch]
    low = below[-1] if below else measured[0]
    high = above[0] if above else measured[-1]
    if high[0] == low[0]:
        ms = low[1] * batch / low[0] if batch > low[0] else low[1]
    else:
        ms = low[1] + (high[1] - low[1]) * (batch - low[0]) / (high[0] - low[0])
    return batch / (ms / 1000.0)


def stages(
    modality: Modality,
    before: dict,
    after: dict,
    measured: float,
    threads: int,
    model_points: list[dict[str, Any]],
) -> dict[str, Any]:
    """Per-item stage costs of one load run, the capacities they imply, and the limit."""
    name = modality.value
    decoded = _delta(after, before, "ib_preprocess_seconds_count", name)
    decode_s = _delta(after, before, "ib_preprocess_seconds_sum", name)
    items = _delta(after, before, "ib_items_embedded_total", name)
    compute_s = _delta(after, before, "ib_compute_seconds_sum", name)
    batches = _delta(after, before, "ib_batch_items_count", name)
    waited = _delta(after, before, "ib_queue_wait_seconds_sum", name)
    waits = _delta(after, before, "ib_queue_wait_seconds_count", name)
    record: dict[str, Any] = {"decoding_threads": threads}
    decode_capacity = model_capacity = None
    if decoded and decode_s > 0:
        record["decode_ms_per_item"] = round(1000 * decode_s / decoded, 3)
        decode_capacity = threads * decoded / decode_s
        record["decode_capacity"] = round(decode_capacity, 2)
    if items and compute_s > 0:
        record["model_ms_per_item"] = round(1000 * compute_s / items, 3)
        model_capacity = items / compute_s
        record["model_capacity"] = round(model_capacity, 2)
    if batches:
        mean_batch = items / batches
        record["mean_batch_items"] = round(mean_batch, 2)
        rate = interpolate_rate(model_points, mean_batch)
        if rate is not None:
            record["model_only_items_per_s"] = round(rate, 2)
    if waits:
        record["queue_wait_ms"] = round(1000 * waited / waits, 3)
    shares = {
        stage: measured / capacity
        for stage, capacity in (("decode", decode_capacity), ("model", model_capacity))
        if capacity
    }
    record["busy"] = {stage: round(share, 3) for stage, share in shares.items()}
    busiest = max(shares, key=shares.get) if shares else None
    if busiest is not None and shares[busiest] >= BUSY:
        record["limited_by"] = busiest
    else:
        record["limited_by"] = "neither (clients, HTTP, event loop or load generator)"
    return record


def cpu_seconds(usage: resource.struct_rusage) -> float:
    return usage.ru_utime + usage.ru_stime


def bench_command(url: str, clients: int, duration_s: float, json_path: Path) -> list[str]:
    """One load run: every modality in turn, ``clients`` one-item clients each."""
    command = [sys.executable, "-m", "ib_vectorizer", "bench", "--url", url]
    command += ["--concurrency", str(clients), "--duration", f"{duration_s:g}"]
    command += ["--warmup-requests", str(clients), "--request-timeout", "120"]
    command += ["--json", str(json_path)]
    for modality in Modality:
        command += ["--mix", modality.label]
    return command


def scenario_duration(plan: Plan, left_s: float, runs: int) -> float:
    """Seconds each scenario measures for, so that ``runs`` load runs fit in ``left_s``.

    A run also starts Python and makes its payloads (about 8 s), and warms up
    each scenario (one request per client): 40 % of a scenario's share is kept
    for the warm-up and the last answers.
    """
    share = max(0.0, left_s - 8.0 * runs) / (runs * len(Modality))
    low, high = (0.5, 1.0) if plan.dry_run else (2.0, 8.0)
    return round(min(high, max(low, 0.6 * share)), 2)


def run_server_step(
    plan: Plan,
    checkpoint: Path,
    model_points: dict[str, list[dict[str, Any]]],
    workdir: Path,
    clock: Clock,
    budget_s: float,
    entry: dict[str, Any],
    save: Callable[[], None],
) -> None:
    """Start the server, run one load run per client count, record it all in ``entry``."""
    deadline = time.monotonic() + budget_s
    cores = os.cpu_count() or 1
    env = server_env(plan, checkpoint, cores)
    entry["settings"] = {k: v for k, v in env.items() if v}
    entry["scenarios"] = {}
    client_env = {k: v for k, v in os.environ.items() if k != "IB_API_KEY"}
    log_path = workdir / "server.log"
    started = time.monotonic()
    with ServerProcess(env, log_path=log_path, name="inference server") as server:
        try:
            server.wait_ready(timeout_s=max(10.0, deadline - time.monotonic() - 10.0))
        except Exception:
            entry["server_log_tail"] = server.log_tail(30)
            raise
        entry["startup_s"] = round(time.monotonic() - started, 2)
        progress(clock, f"server ready in {entry['startup_s']:.1f} s at {server.url}")
        for index, clients in enumerate(plan.concurrency):
            runs_left = len(plan.concurrency) - index
            duration = scenario_duration(plan, deadline - time.monotonic(), runs_left)
            json_path = workdir / f"bench-{clients}.json"
            before = scrape(server.url)
            progress(clock, f"load run: {clients} clients, {duration:g} s per modality")
            command = bench_command(server.url, clients, duration, json_path)
            timeout = max(10.0, deadline - time.monotonic())
            children = resource.getrusage(resource.RUSAGE_CHILDREN)
            run_started = time.monotonic()
            # Its lines go to this run's output as they come: a run cut short shows them.
            finished = subprocess.run(command, env=client_env, timeout=timeout, check=False)
            run_s = time.monotonic() - run_started
            after = scrape(server.url)
            cpu_s = cpu_seconds(resource.getrusage(resource.RUSAGE_CHILDREN)) - cpu_seconds(
                children
            )
            if not json_path.exists():
                raise RuntimeError(
                    f"the load generator wrote no results (status {finished.returncode}; "
                    "its output is in the run's log)"
                )
            report = json.loads(json_path.read_text())
            for scenario in report["scenarios"]:
                modality = Modality.parse(scenario["name"].split("=")[0])
                result = scenario["results"]["server"]
                record = {
                    "clients": clients,
                    "duration_s": duration,
                    "items_per_s": result["throughput"],
                    "p50_ms": result["p50_ms"],
                    "p99_ms": result["p99_ms"],
                    "requests": result["requests"],
                    "errors": result["errors"],
                    "error_samples": result["error_samples"],
                }
                record.update(
                    stages(
                        modality,
                        before,
                        after,
                        result["throughput"],
                        cores,  # IB_PREPROCESS_WORKERS: the decoding threads
                        model_points.get(modality.value, []),
                    )
                )
                entry["scenarios"].setdefault(modality.value, []).append(record)
                progress(
                    clock,
                    f"server {modality.value} x{clients}: {record['items_per_s']:.1f} items/s, "
                    f"p99 {record['p99_ms']} ms, limited by {record['limited_by']}",
                )
            entry.setdefault("load_runs", []).append(
                {
                    "clients": clients,
                    "exit_status": finished.returncode,
                    "seconds": round(run_s, 2),
                    "load_generator_cores": round(cpu_s / run_s, 3),
                }
            )
            save()
        entry["server_log_tail"] = server.log_tail(15)
