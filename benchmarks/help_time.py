"""How long each command takes to answer ``--help``, against a bare Python start.

    python -m benchmarks.help_time [--repeats 5] [--only ib-ingest ib-query ...]

Every console script in pyproject.toml's ``[project.scripts]`` is run with
``--help`` as a fresh process, and so is each of its sub-commands (found in
its own help: ``ib-vectorizer embed --help``, ``ib-runner start --help``, ...).
The installed script beside this Python is run when there is one, else the
entry point through ``python -c``. The baseline is ``python -c pass`` on the
same interpreter, measured in the same run. Each figure is the best of
``--repeats`` runs; the table gives seconds and the ratio to the baseline.
A command users wait on is one whose ``--help`` is slow: imports of torch or
Beam before the flags are read show up here.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path

PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"
# argparse lists a command's sub-commands as the choices of its first positional argument.
_SUBCOMMANDS = re.compile(r"^positional arguments:\n\s+\{([\w,-]+)\}", re.MULTILINE)


@dataclass(frozen=True)
class Command:
    """One command line to time: its label in the table and what to run."""

    label: str
    argv: tuple[str, ...]


def console_scripts(pyproject: Path = PYPROJECT) -> dict[str, str]:
    """``[project.scripts]``: script name → ``module:function``."""
    with open(pyproject, "rb") as handle:
        return dict(tomllib.load(handle)["project"]["scripts"])


def script_argv(name: str, entry_point: str) -> tuple[str, ...]:
    """How users start ``name``: the installed script, else its entry point run by Python."""
    installed = Path(sys.executable).with_name(name)
    if installed.is_file():
        return (str(installed),)
    module, _, function = entry_point.partition(":")
    code = (
        f"import sys; from {module} import {function}; "
        f"sys.argv[0] = {name!r}; sys.exit({function}())"
    )
    return (sys.executable, "-c", code)


def run_once(argv: tuple[str, ...]) -> tuple[float, str]:
    """Wall seconds of one run of ``argv`` and its output; a failing command is an error."""
    started = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited with {done.returncode}: {done.stderr[-500:]}")
    return elapsed, done.stdout


def best_of(argv: tuple[str, ...], repeats: int) -> tuple[float, str]:
    """The fastest of ``repeats`` runs (the others met a busy machine), and the output."""
    times, output = [], ""
    for _ in range(repeats):
        elapsed, output = run_once(argv)
        times.append(elapsed)
    return min(times), output


def subcommands(help_text: str) -> list[str]:
    """The sub-commands a command's ``--help`` lists; none for a command without them."""
    found = _SUBCOMMANDS.search(help_text)
    return found[1].split(",") if found else []


def measure(scripts: dict[str, str], repeats: int) -> tuple[float, list[tuple[str, float]]]:
    """The baseline's seconds and, for each command and sub-command, its ``--help`` seconds."""
    baseline, _ = best_of((sys.executable, "-c", "pass"), repeats)
    rows = []
    for name, entry_point in scripts.items():
        argv = script_argv(name, entry_point)
        seconds, text = best_of((*argv, "--help"), repeats)
        rows.append((f"{name} --help", seconds))
        for sub in subcommands(text):
            seconds, _ = best_of((*argv, sub, "--help"), repeats)
            rows.append((f"{name} {sub} --help", seconds))
    return baseline, rows


def table(baseline: float, rows: list[tuple[str, float]]) -> str:
    """A Markdown table: command, seconds, ratio to the baseline (first row)."""
    lines = ["| command | seconds | ÷ python -c pass |", "|---|---:|---:|"]
    lines.append(f"| python -c pass (baseline) | {baseline:.3f} | 1.0× |")
    lines += [f"| {label} | {s:.3f} | {s / baseline:.1f}× |" for label, s in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.help_time", description=__doc__)
    parser.add_argument("--repeats", type=int, default=5, help="runs per command; the best counts")
    parser.add_argument(
        "--only", nargs="+", metavar="SCRIPT", help="these console scripts only (default: all)"
    )
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    scripts = console_scripts()
    if args.only:
        unknown = sorted(set(args.only) - scripts.keys())
        if unknown:
            parser.error(f"not in [project.scripts]: {', '.join(unknown)}")
        scripts = {name: entry for name, entry in scripts.items() if name in args.only}
    from ib_vectorizer.bench.report import cpu_model

    baseline, rows = measure(scripts, args.repeats)
    print(f"machine: {cpu_model()}; best of {args.repeats} runs, each a fresh process")
    print(table(baseline, rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
