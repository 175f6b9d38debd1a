"""``ib-ingest``: the Beam job that embeds a dataset with ImageBind and writes it into Weaviate."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    """The console script: logging is set up before Beam is imported.

    Importing Beam logs a warning about optional Google Cloud client libraries,
    and Google's client libraries warn about their own support dates (this
    Python, grpcio's); none of it says anything about this job, so imports run
    with those held back and a user's terminal shows only what the job says.
    """
    from ..command import console_logging

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=FutureWarning, module=r"google\.")
            from .command import main as run
    finally:
        root.setLevel(level)
    console_logging()
    return run(argv)
