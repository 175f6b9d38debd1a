"""``python -m benchmarks.gpu_check OUT_DIR [--dry-run]``: see benchmarks/gpu_check.sh."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.gpu_check",
        description="Parity, model throughput and server throughput on a GPU, in one run "
        "of under 8 minutes; --dry-run: the same with the tiny model on the CPU.",
    )
    parser.add_argument("out_dir", type=Path, nargs="?", help="where gpu_check.json/.md go")
    parser.add_argument("--dry-run", action="store_true", help="tiny model, CPU, seconds")
    parser.add_argument("--compile-worker", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.compile_worker is not None:
        from .throughput import compile_worker

        return compile_worker(args.compile_worker)
    if args.out_dir is None:
        parser.error("OUT_DIR is required")
    from .run import run

    return run(args.out_dir, args.dry_run)


if __name__ == "__main__":
    sys.exit(main())
