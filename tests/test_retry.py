"""Exponential backoff with jitter, and what is retried."""

from __future__ import annotations

import random

import pytest

from ib_vectorizer.retry import Backoff, call_with_retries


def test_delays_grow_exponentially_within_their_jitter_and_the_cap():
    backoff = Backoff(base_s=1.0, max_s=10.0)
    rng = random.Random(0)
    for retry, ceiling in enumerate([1, 2, 4, 8, 10, 10]):
        delays = [backoff.delay(retry, rng) for _ in range(200)]
        assert ceiling / 2 <= min(delays) and max(delays) <= ceiling
        assert len(set(delays)) > 100  # jittered, so workers do not retry in step
    assert Backoff(base_s=3.0, jitter=False).delay(2) == 12.0


def test_retries_a_transient_failure_until_it_succeeds():
    calls, waits = [], []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionError("reset")
        return "ok"

    result = call_with_retries(
        flaky, retryable=lambda e: isinstance(e, ConnectionError), sleep=waits.append
    )
    assert result == "ok" and len(calls) == 3 and len(waits) == 2


def test_gives_up_after_the_attempts_with_the_last_error():
    waits = []

    def down():
        raise ConnectionError(f"down {len(waits)}")

    with pytest.raises(ConnectionError, match="down 3"):
        call_with_retries(
            down, retryable=lambda e: True, backoff=Backoff(attempts=4), sleep=waits.append
        )
    assert len(waits) == 3


def test_a_failure_that_is_not_retryable_raises_at_once():
    waits = []
    with pytest.raises(ValueError):
        call_with_retries(
            lambda: int("x"), retryable=lambda e: isinstance(e, OSError), sleep=waits.append
        )
    assert waits == []
