"""Dead letters: what failed, where, and why, as one flat record per item."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Failure:
    """An item that could not be processed: its id, where it came from, the stage that
    failed (``read``, ``decode``, ``embed``, ``write``, ...) and the reason, in one line."""

    id: str
    source: str
    stage: str
    error: str

    def as_dict(self) -> dict[str, str]:
        return {"id": self.id, "source": self.source, "stage": self.stage, "error": self.error}
