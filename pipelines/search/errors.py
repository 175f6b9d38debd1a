"""The one error type of ib-search's API: what the page shows, with its HTTP status."""

from __future__ import annotations


class ApiError(Exception):
    """A request the page can show the reason for: ``status`` 4xx, or 502/503 for Weaviate."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
