"""A progress line every few seconds while a Beam job runs, for ib-ingest and ib-tag.

The reporter polls the job's counters (this process's running totals, or the
engine's on Flink and Spark) and hands each job's own ``line`` function a
:class:`Progress`: the counters now, the seconds since the start, and rates over
the last half minute, so a job that spent its first minute loading a model
still shows the rate it runs at now.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from .beam.counters import process_totals, reset_process_totals

RATE_WINDOW_S = 30.0  # rates are measured over about this many seconds


@dataclass(frozen=True)
class Progress:
    """The job's counters now, the seconds since it started, and its recent rates."""

    counts: dict[str, int]
    elapsed_s: float
    window_counts: dict[str, int]  # the counters at the start of the rate window
    window_s: float  # seconds since the start of the rate window

    def __getitem__(self, name: str) -> int:
        return self.counts.get(name, 0)

    def rate(self, name: str) -> float:
        """``name`` per second over the last :data:`RATE_WINDOW_S` seconds."""
        if self.window_s <= 0:
            return 0.0
        return (self[name] - self.window_counts.get(name, 0)) / self.window_s


def format_seconds(seconds: float) -> str:
    """``42 s``, ``2 min 05 s``, ``1 h 02 min``."""
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


class ProgressReporter:
    """Logs ``line(progress)`` every ``every_s`` seconds until stopped.

    ``counts`` gives the job's counters now (default: this process's running
    totals in ``namespace``), or None while they are not known; the last known
    are shown then.
    """

    def __init__(
        self,
        every_s: float,
        counts: Callable[[], dict[str, int] | None] | None,
        *,
        namespace: str,
        counters: tuple[str, ...],
        line: Callable[[Progress], str],
        logger: logging.Logger,
    ) -> None:
        self.every_s = every_s
        self.log = logger
        self.namespace = namespace
        self.counters = counters
        self.line = line
        self._counts = counts or self._process_totals
        self._last = dict.fromkeys(counters, 0)
        self._history: deque[tuple[float, dict[str, int]]] = deque()
        self.started = time.perf_counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="job-progress", daemon=True)

    def _process_totals(self) -> dict[str, int]:
        counted = process_totals(self.namespace)
        return {name: counted.get(name, 0) for name in self.counters}

    def __enter__(self) -> ProgressReporter:
        reset_process_totals(self.namespace)
        self.started = time.perf_counter()
        self._history = deque([(self.started, dict(self._last))])
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def progress(self, now: float) -> Progress:
        """The last known counters, with rates against the oldest sample in the window."""
        self._history.append((now, dict(self._last)))
        while len(self._history) > 2 and now - self._history[1][0] >= RATE_WINDOW_S:
            self._history.popleft()
        since, then = self._history[0]
        return Progress(dict(self._last), now - self.started, then, now - since)

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            counts = self._counts()
            if counts is not None:
                self._last = dict.fromkeys(self.counters, 0) | dict(counts)
            self.log.info(self.line(self.progress(time.perf_counter())))
