"""``ib-vectorizer bench``: a load generator that measures the inference server from outside.

It is a client of the server, so it lives apart from it: :mod:`.payloads`
makes the inputs, :mod:`.driver` sends them in Weaviate's pattern,
:mod:`.report` turns the answers into figures, and :mod:`.command` is the
subcommand that starts the servers and runs it all.
"""

from .command import add_bench_parser

__all__ = ["add_bench_parser"]
