"""Unit tests of the memory budget and the decode pool that serves requests in turn within it."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from ib_vectorizer.serving.budget import MemoryBudget
from ib_vectorizer.serving.decoding import DecodeJob, DecodePool
from ib_vectorizer.serving.queue import DeadlineExceeded

FAR = 1e12  # a deadline that never comes


class Recorder:
    """Jobs that note when they run, take ``seconds`` and return a tensor of ``keep`` bytes."""

    def __init__(self, budget: MemoryBudget) -> None:
        self.budget = budget
        self.order: list[str] = []
        self.peak_used = 0
        self._lock = threading.Lock()

    def job(self, name: str, cost: int, seconds: float = 0.0, keep: int = 4) -> DecodeJob:
        def run() -> torch.Tensor:
            with self._lock:
                self.order.append(name)
                self.peak_used = max(self.peak_used, self.budget.used)
            time.sleep(seconds)
            return torch.zeros(keep // 4)

        return DecodeJob(inspect=lambda: cost, run=run, keep=keep)


def test_budget_takes_gives_and_waits_until_its_deadline():
    budget = MemoryBudget(100)
    assert budget.try_take(60) and not budget.try_take(50) and budget.available == 40
    assert not budget.take(50, deadline=time.monotonic() + 0.05)  # nobody gives: too late
    threading.Timer(0.05, budget.give, args=(60,)).start()
    assert budget.take(50, deadline=time.monotonic() + 10)  # given back meanwhile
    assert budget.used == 50
    assert not budget.take(101, deadline=FAR)  # more than the whole budget never fits
    with pytest.raises(ValueError, match="at least one byte"):
        MemoryBudget(0)


def test_requests_are_served_in_turn_not_one_after_the_other():
    budget = MemoryBudget(1 << 30)
    recorder = Recorder(budget)
    pool = DecodePool(threads=1, budget=budget, request_share=1 << 29)
    try:
        big = [recorder.job(f"big-{n}", 10, seconds=0.02) for n in range(20)]
        first = pool.submit(big, FAR)
        time.sleep(0.05)  # the big request is under way
        small = [recorder.job("small", 10)]
        second = pool.submit(small, FAR)
        small[0].future.result(timeout=10)
        # The small request's item came next in turn, not after the other 19.
        assert recorder.order.index("small") <= 4, recorder.order
        for job in big:
            job.future.result(timeout=10)
    finally:
        first.close()
        second.close()
        pool.close()
    assert budget.used == 0


def test_the_server_budget_is_never_exceeded_and_each_request_keeps_to_its_share():
    budget = MemoryBudget(1000)
    recorder = Recorder(budget)
    pool = DecodePool(threads=4, budget=budget, request_share=500)
    try:
        jobs = [[recorder.job(f"{r}-{n}", 300, seconds=0.01) for n in range(6)] for r in range(3)]
        requests = [pool.submit(own, FAR) for own in jobs]
        for handle, own in zip(requests, jobs, strict=True):
            for job in own:
                job.future.result(timeout=30)
                handle.release(job)
        assert recorder.peak_used <= 1000  # at most three 300-byte decodes at once
        assert len(recorder.order) == 18
    finally:
        for handle in requests:
            handle.close()
        pool.close()
    assert budget.used == 0


def test_a_request_alone_may_exceed_its_share_by_one_item():
    budget = MemoryBudget(1000)
    pool = DecodePool(threads=2, budget=budget, request_share=100)
    recorder = Recorder(budget)
    jobs = [recorder.job("large", 400)]
    handle = pool.submit(jobs, FAR)
    try:
        assert jobs[0].future.result(timeout=10).shape == (1,)
        assert budget.used == 4  # its model input, until released
        handle.release(jobs[0])
        assert budget.used == 0
    finally:
        handle.close()
        pool.close()


def test_an_item_that_cannot_get_memory_before_its_deadline_fails_alone():
    budget = MemoryBudget(1000)
    budget.try_take(900)  # someone else holds most of it
    pool = DecodePool(threads=1, budget=budget, request_share=1000)
    recorder = Recorder(budget)
    jobs = [recorder.job("waits", 500)]
    handle = pool.submit(jobs, time.monotonic() + 0.1)
    try:
        with pytest.raises(DeadlineExceeded):
            jobs[0].future.result(timeout=10)
        assert recorder.order == [] and budget.used == 900
    finally:
        handle.close()
        pool.close()


def test_closing_a_request_drops_its_waiting_items_and_gives_back_every_byte():
    budget = MemoryBudget(1 << 20)
    recorder = Recorder(budget)
    pool = DecodePool(threads=1, budget=budget, request_share=1 << 19)
    jobs = [recorder.job(f"j{n}", 100, seconds=0.05, keep=1000) for n in range(10)]
    handle = pool.submit(jobs, FAR)
    try:
        jobs[0].future.result(timeout=10)
        handle.close()  # the rest are not needed: a request failed or timed out
        time.sleep(0.2)
        assert sum(job.future.cancelled() for job in jobs) >= 8
        assert len(recorder.order) <= 2
    finally:
        pool.close()
    deadline = time.monotonic() + 5
    while budget.used and time.monotonic() < deadline:
        time.sleep(0.01)
    assert budget.used == 0


def test_an_item_that_fails_its_inspection_fails_alone_and_takes_nothing():
    budget = MemoryBudget(1000)
    pool = DecodePool(threads=1, budget=budget, request_share=1000)

    def refuse() -> int:
        raise ValueError("image is 30000x1 pixels")

    bad = DecodeJob(inspect=refuse, run=lambda: torch.zeros(1), keep=4)
    good = Recorder(budget).job("good", 10)
    handle = pool.submit([bad, good], FAR)
    try:
        with pytest.raises(ValueError, match="30000x1"):
            bad.future.result(timeout=10)
        assert good.future.result(timeout=10).shape == (1,)
    finally:
        handle.close()
        pool.close()
    assert budget.used == 0
