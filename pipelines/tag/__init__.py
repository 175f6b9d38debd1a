"""``ib-tag``: the Beam job that re-tags a collection with zero-shot labels from its stored
vectors (the flow is :mod:`.pipeline`, the command line :mod:`.command`)."""

from __future__ import annotations

from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    """The console script (:mod:`.command`), its Beam import kept quiet."""
    from ..command import run_beam_command

    return run_beam_command("pipelines.tag.command", argv)
