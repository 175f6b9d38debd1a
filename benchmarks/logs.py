"""The commands' console logging, with the benchmarks' own progress lines shown too."""

from __future__ import annotations

import logging

LOGGER = "benchmarks"


def console_logging() -> None:
    """Log lines as the commands print them, plus this package's INFO lines (what a dataset
    writes, where a job's logs are), which the commands' setup leaves at WARNING."""
    from pipelines.command import console_logging as commands_logging

    commands_logging()
    logging.getLogger(LOGGER).setLevel(logging.INFO)
