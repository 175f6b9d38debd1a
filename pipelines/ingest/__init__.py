"""``ib-ingest``: the Beam job that embeds a dataset with ImageBind and writes it into Weaviate."""

from __future__ import annotations

from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    """The console script (:mod:`.command`), its Beam import kept quiet."""
    from ..command import run_beam_command

    return run_beam_command("pipelines.ingest.command", argv)
