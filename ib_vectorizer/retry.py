"""Retrying transient failures: exponential backoff with jitter, in one place.

Used for the checkpoint download, the Beam pipeline's calls to the inference
server, and its writes to Weaviate. The jitter spreads the retries of many
workers that failed together (a restarting server, a busy Weaviate node), so
they do not all come back in the same instant.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Backoff:
    """``attempts`` tries in all; before retry k (0-based) wait about ``base_s · 2**k``.

    The wait is drawn from [½, 1] of that (capped at ``max_s``), so it never
    collapses to zero yet two workers rarely wait the same time.
    """

    attempts: int = 5
    base_s: float = 1.0
    max_s: float = 30.0
    jitter: bool = True

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError("a backoff needs at least one attempt")

    def delay(self, retry: int, rng: random.Random | None = None) -> float:
        ceiling = min(self.max_s, self.base_s * 2**retry)
        if not self.jitter:
            return ceiling
        return (rng or random).uniform(ceiling / 2, ceiling)


NO_WAIT = Backoff(base_s=0.0)


def first_line(err: BaseException) -> str:
    """An exception as one short line, for logs and dead letters."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def call_with_retries(
    call: Callable[[], T],
    *,
    retryable: Callable[[Exception], bool],
    backoff: Backoff = Backoff(),
    what: str = "call",
    log: logging.Logger | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """``call()``, retried while it raises an exception ``retryable`` accepts.

    The last exception (or the first one that is not retryable) propagates
    unchanged, so the caller decides what a final failure means.
    """
    logger = log or logging.getLogger(__name__)
    for attempt in range(backoff.attempts):
        try:
            return call()
        except Exception as err:
            if attempt == backoff.attempts - 1 or not retryable(err):
                raise
            delay = backoff.delay(attempt)
            logger.warning(
                "%s failed (%s); retry %d/%d in %.1f s",
                what,
                first_line(err),
                attempt + 1,
                backoff.attempts - 1,
                delay,
            )
            sleep(delay)
    raise AssertionError("unreachable")
