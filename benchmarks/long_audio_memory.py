"""Memory of segmented ingestion against a recording's length.

    python -m benchmarks.long_audio_memory [--minutes 10 120] [--data-dir D]

Writes one 48 kHz stereo WAV of each length, ingests each with the real
``ib-ingest --segment-seconds 10`` in a subprocess and prints the job's peak
RSS (its whole process tree) beside what the recording would take decoded
whole. Streaming decode keeps the job's memory flat: the longest recording
should cost what the shortest does, far below its decoded size.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from ib_vectorizer.options import ModelOptions, add_flags, from_sources
from pipelines.stack import LocalStack

from .ingest_job import ingest_command, mib, run_job
from .logs import console_logging
from .scale_dataset import write_long_recording


def run_long_audio(work: Path, minutes: list[float], model: ModelOptions, stack: LocalStack) -> int:
    """Ingest one recording of each length in segments; print the job's peak RSS for each."""
    rows = []
    for length in minutes:
        root = work / f"long-{length:g}min"
        (root / "audio").mkdir(parents=True, exist_ok=True)
        write_long_recording(root / "audio" / "recording.wav", length)
        command = ingest_command(
            root, f"Long{int(length)}M{int(time.time())}", stack.endpoints, model,
            work / f"long-{length:g}.jsonl", ["--segment-seconds", "10"],
        )  # fmt: skip
        run = run_job(command, work / f"long-{length:g}.json", work / f"long-{length:g}.log")
        decoded = length * 60 * 48_000 * 2 * 4  # float32 samples, were it decoded whole
        rows.append((length, run.counters.get("segments", 0), run.elapsed_s, run.peak_rss, decoded))
    print("| recording (48 kHz stereo WAV) | segments of 10 s | job wall time | "
          "job peak RSS | decoded whole would be |")  # fmt: skip
    print("|---|---|---|---|---|")
    for length, segments, elapsed, peak, decoded in rows:
        print(f"| {length:g} min | {segments} | {elapsed:.0f} s | {mib(peak)} | {mib(decoded)} |")
    growth = rows[-1][3] - rows[0][3]
    print(f"peak RSS growth from {rows[0][0]:g} to {rows[-1][0]:g} min: {mib(growth)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    console_logging()
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.long_audio_memory", description=__doc__
    )
    parser.add_argument(
        "--minutes",
        type=float,
        nargs="+",
        default=[10.0, 120.0],
        help="the recordings' lengths (default: 10 120)",
    )
    parser.add_argument("--data-dir", help="local stack data directory (default: a temporary one)")
    add_flags(parser.add_argument_group("model"), ModelOptions)
    args = parser.parse_args(argv)
    model = from_sources(ModelOptions, args)
    with tempfile.TemporaryDirectory(prefix="ib-ingest-long-") as tmp:
        stack = LocalStack(args.data_dir or Path(tmp) / "stack", model)
        with stack:
            return run_long_audio(Path(tmp), sorted(args.minutes), model, stack)


if __name__ == "__main__":
    sys.exit(main())
