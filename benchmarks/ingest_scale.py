"""The scale benchmark: a mixed dataset of N files through ``ib-ingest``, then an unchanged re-run.

    python -m benchmarks.ingest_scale --objects 100000 [--dataset DIR] [--data-dir D]

Writes the dataset of :mod:`benchmarks.scale_dataset` (or reuses ``--dataset``),
starts the local stack, runs the real ``ib-ingest`` command in a subprocess
(media stored by URI: 100,000 photos as BLOBs would double the disk the
dataset takes) and reports:

* objects/s overall, and per modality the decode and embed milliseconds per
  object the job measured, as objects/s per core;
* peak RSS of the job (its whole process tree), of Weaviate and of the
  inference server;
* throughput of the first and the last 10% of the objects, timed from the
  first object written (a job that slows down as the collection grows shows
  it here);
* that the dead letters are the corrupt files exactly and the collection holds
  every other object exactly once;
* the wall time of a re-run on the unchanged tree.

Exit status 1 when a check fails. Beam options after the flags go to both jobs.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

from ib_vectorizer.options import ModelOptions, add_flags, from_sources
from pipelines.stack import LocalStack

from .ingest_job import JobRun, ingest_command, mib, peak_rss, run_job
from .logs import console_logging
from .scale_dataset import MIX, DatasetPlan, write_dataset

log = logging.getLogger("benchmarks.ingest_scale")


def tenths(done_at: list[tuple[float, int]], total: int) -> list[float]:
    """Objects/s over each tenth of ``total`` in turn, from the progress samples.

    Each tenth runs from the first sample at or past its start to the first at
    or past its end, and counts what was done between them; the first starts at
    the first sample with anything done, so start-up is not counted.
    """
    marks = [next((s for s in done_at if s[1] > 0), None)]
    marks += [next((s for s in done_at if s[1] >= total * k / 10), None) for k in range(1, 11)]
    rates = []
    for start, end in itertools.pairwise(marks):
        if start is None or end is None or end[0] <= start[0]:
            return rates
        rates.append((end[1] - start[1]) / (end[0] - start[0]))
    return rates


def dead_letter_ids(path: Path) -> list[str]:
    if not path.exists():
        return []
    return [json.loads(line)["id"] for line in path.read_text().splitlines() if line.strip()]


def run_scale(
    plan: DatasetPlan,
    root: Path,
    work: Path,
    model: ModelOptions,
    stack: LocalStack,
    extra: list[str],
) -> int:
    """Both runs against ``stack``; prints the report and returns the exit status."""
    collection = f"Scale{plan.objects}T{int(time.time())}"
    dead_letter = work / "failures.jsonl"
    command = ingest_command(root, collection, stack.endpoints, model, dead_letter, extra)
    first = run_job(command, work / "first.json", work / "first.log")
    rerun_dead = work / "rerun-failures.jsonl"
    rerun_command = ingest_command(root, collection, stack.endpoints, model, rerun_dead, extra)
    rerun = run_job(rerun_command, work / "rerun.json", work / "rerun.log")
    pids = stack.pids()
    server_peaks = {name: peak_rss(pid) for name, pid in pids.items()}
    with stack.client() as client:
        stored = client.collections.get(collection).aggregate.over_all(total_count=True)
    checks = {
        "dead letters are the corrupt files exactly": sorted(dead_letter_ids(dead_letter))
        == sorted(plan.corrupt),
        f"collection holds {plan.valid} objects": stored.total_count == plan.valid,
        "re-run wrote nothing": rerun.counters.get("written", 0) == 0,
        f"re-run found {plan.valid} unchanged": rerun.counters.get("unchanged", 0) == plan.valid,
    }
    print(report(plan, first, rerun, server_peaks, checks, stored.total_count))
    return 0 if all(checks.values()) else 1


def report(
    plan: DatasetPlan,
    first: JobRun,
    rerun: JobRun,
    server_peaks: dict[str, int],
    checks: dict[str, bool],
    stored: int,
) -> str:
    """The report as Markdown tables, then one line per check."""
    from ib_vectorizer.bench.report import cpu_model

    c = first.counters
    lines = [
        f"machine: {cpu_model()}, {os.cpu_count()} cores; {plan.objects:,} files, "
        f"{plan.bytes_on_disk / 1e9:.1f} GB, {len(plan.corrupt)} corrupt",
        "",
        "| | value |",
        "|---|---|",
        f"| first run | {first.elapsed_s:,.0f} s, "
        f"{c.get('written', 0) / first.elapsed_s:.1f} objects/s written |",
    ]
    rates = tenths(first.done_at, plan.objects)
    if len(rates) == 10:
        lines.append(
            f"| first 10% / last 10% | {rates[0]:.1f} / {rates[-1]:.1f} objects/s "
            f"(last/first {rates[-1] / rates[0]:.2f}) |"
        )
        lines.append(f"| each tenth, objects/s | {' · '.join(f'{r:.1f}' for r in rates)} |")
    lines += [
        f"| peak RSS: ib-ingest (process tree) | {mib(first.peak_rss)} |",
        *(f"| peak RSS: {name} | {mib(value)} |" for name, value in server_peaks.items()),
        f"| dead letters / corrupt files | {c.get('failed', 0) + c.get('read_failed', 0)}"
        f" / {len(plan.corrupt)} |",
        f"| objects in the collection / expected | {stored:,} / {plan.valid:,} |",
        f"| re-run of the unchanged tree | {rerun.elapsed_s:,.0f} s = "
        f"{100 * rerun.elapsed_s / first.elapsed_s:.1f}% of the first run |",
        "",
        "| modality | objects | decode ms/object | embed ms/object | objects/s per core |",
        "|---|---|---|---|---|",
    ]
    for label in MIX:
        count = plan.counts.get(label, 0)
        if not count:
            continue
        decode = c.get(f"decode_ms_{label}", 0) / count
        embed = c.get(f"embed_ms_{label}", 0) / count
        per_core = 1000 / (decode + embed) if decode + embed > 0 else float("inf")
        lines.append(f"| {label} | {count:,} | {decode:.1f} | {embed:.1f} | {per_core:,.0f} |")
    lines.append("")
    lines += [f"{'ok ' if ok else 'FAILED'} {what}" for what, ok in checks.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    console_logging()
    parser = argparse.ArgumentParser(prog="python -m benchmarks.ingest_scale", description=__doc__)
    parser.add_argument("--objects", type=int, default=100_000, help="files in the dataset")
    parser.add_argument(
        "--dataset", help="where the dataset is written, or reused (default: a temporary one)"
    )
    parser.add_argument("--data-dir", help="local stack data directory (default: a temporary one)")
    add_flags(parser.add_argument_group("model"), ModelOptions)
    args, beam_args = parser.parse_known_args(argv)
    if args.objects < 1:
        print("error: --objects must be at least 1", file=sys.stderr)
        return 1

    model = from_sources(ModelOptions, args)
    with tempfile.TemporaryDirectory(prefix="ib-ingest-scale-") as tmp:
        root = Path(args.dataset) if args.dataset else Path(tmp) / "data"
        plan = write_dataset(root, args.objects)
        work = root.with_name(root.name + "-runs") if args.dataset else Path(tmp)
        work.mkdir(exist_ok=True)  # the jobs' logs, metrics and dead letters
        log.info("job logs in %s", work)
        with LocalStack(args.data_dir or work / "stack", model) as stack:
            return run_scale(plan, root, work, model, stack, beam_args)


if __name__ == "__main__":
    sys.exit(main())
