"""Beam counters that also keep this process's running totals.

A runner reports a counter when the job ends (or through its own UI); a
job's launcher that wants a progress line while the job runs on an
in-process runner (Direct, Prism) reads these totals instead.
"""

from __future__ import annotations

import collections
import threading

import apache_beam as beam

DEFAULT_NAMESPACE = "weaviate"  # of the Weaviate steps' counters (read, written, failed)

_totals: collections.Counter[tuple[str, str]] = collections.Counter()
_totals_lock = threading.Lock()


class Counter:
    """A Beam counter ``namespace:name`` plus this process's running total (picklable)."""

    def __init__(self, namespace: str, name: str) -> None:
        self.namespace = namespace
        self.name = name
        self._beam = beam.metrics.Metrics.counter(namespace, name)

    def inc(self, n: int = 1) -> None:
        self._beam.inc(n)
        with _totals_lock:
            _totals[self.namespace, self.name] += n


def process_totals(namespace: str) -> dict[str, int]:
    """This process's totals of the counters in ``namespace``, by name."""
    with _totals_lock:
        return {name: n for (space, name), n in _totals.items() if space == namespace}


def reset_process_totals(namespace: str) -> None:
    with _totals_lock:
        for key in [key for key in _totals if key[0] == namespace]:
            del _totals[key]
