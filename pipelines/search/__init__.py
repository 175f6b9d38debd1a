"""``ib-search``: a web page to search a collection by text, by any file, or by a result."""

from .server import main

__all__ = ["main"]
