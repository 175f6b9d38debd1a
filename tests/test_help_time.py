"""``python -m benchmarks.help_time``: the table of --help times lists what it ran."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

from benchmarks.help_time import console_scripts, subcommands

ROOT = Path(__file__).resolve().parent.parent


def test_every_declared_script_is_found():
    scripts = console_scripts()
    assert {"ib-vectorizer", "ib-ingest", "ib-query", "ib-tag"} <= scripts.keys()
    assert all(":" in entry_point for entry_point in scripts.values())


def test_subcommands_come_from_the_help_text():
    text = "usage: x [-h] {start,stop} ...\n\npositional arguments:\n  {start,stop}\n"
    assert subcommands(text) == ["start", "stop"]
    assert subcommands("usage: x [-h] --mode {a,b}\n\noptions:\n  -h, --help\n") == []


def test_the_table_lists_the_commands_with_finite_times():
    command = [sys.executable, "-m", "benchmarks.help_time", "--repeats", "1"]
    result = subprocess.run(
        [*command, "--only", "ib-query", "ib-runner"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    table = [line for line in result.stdout.splitlines() if line.startswith("| ")]
    rows = {}
    for line in table[1:]:  # the first is the header
        label, seconds, ratio = (cell.strip() for cell in line.strip("|").split("|"))
        rows[label] = (seconds, ratio)
    assert set(rows) == {
        "python -c pass (baseline)",
        "ib-query --help",
        "ib-runner --help",
        "ib-runner start --help",
        "ib-runner stop --help",
        "ib-runner status --help",
    }, result.stdout
    for seconds, ratio in rows.values():
        assert math.isfinite(float(seconds)) and float(seconds) > 0
        assert math.isfinite(float(ratio.removesuffix("×")))
