"""``ib-search``: a web page to search a collection by text, by any file, by a result,
or by several weighted items at once."""

from .server import main

__all__ = ["main"]
