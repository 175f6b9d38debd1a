"""``ib-ingest``: the Beam job that embeds a dataset with ImageBind and writes it into Weaviate."""

from __future__ import annotations

import logging
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    """The console script: logging is set up before Beam is imported.

    Importing Beam logs a warning about optional Google Cloud client libraries;
    it says nothing about this job, so imports run with warnings held back and
    a user's terminal shows only what the job says.
    """
    from ..command import console_logging

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        from .pipeline import main as run
    finally:
        root.setLevel(level)
    console_logging()
    return run(argv)
