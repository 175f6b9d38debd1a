"""The decode pool: threads that decode the items of every request in turn, within a budget.

Each request's items wait in a line of their own. A free thread serves the
requests round robin, one item at a time, so a request of 256 long texts and
a request of one photo share the threads rather than the photo waiting behind
the texts. Before an item is decoded, what it costs (from its header) plus
its model input is taken from the server's :class:`~.budget.MemoryBudget`
(waiting for it if need be, until the request's deadline); a request holds at
most ``request_share`` bytes of it at once (one item always fits), so one
request cannot take all the memory from the others. The decoding cost is
given back when the item is decoded, its model input when the caller
releases it (once its vector is computed) or when the request is closed.

Nothing here knows HTTP, the model or asyncio: a job is two functions.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field

import torch

from .budget import MemoryBudget
from .queue import DeadlineExceeded


@dataclass(eq=False)
class DecodeJob:
    """One item to decode.

    ``inspect()`` reads its header and returns what decoding takes (raising
    when the item breaks a limit); ``run()`` decodes it; ``keep`` is the size
    of the model input ``run`` returns, held until released.
    """

    inspect: Callable[[], int]
    run: Callable[[], torch.Tensor]
    keep: int
    future: Future = field(default_factory=Future)
    cost: int | None = None  # what inspect() said, once asked
    holds_output: bool = False  # ``keep`` bytes are taken for its model input


@dataclass(eq=False)
class _Request:
    jobs: deque[DecodeJob]
    deadline: float
    held: int = 0  # bytes of the budget this request holds (decoding and inputs)
    closed: bool = False
    all_jobs: list[DecodeJob] = field(default_factory=list)


class RequestDecodes:
    """One request's jobs in the pool: release each model input once used, close at the end."""

    def __init__(self, pool: DecodePool, request: _Request) -> None:
        self._pool = pool
        self._request = request

    def release(self, job: DecodeJob) -> None:
        """The model input of ``job`` is no longer needed: give its bytes back."""
        self._pool._release_output(self._request, job)

    def close(self) -> None:
        """Drop the jobs not started; give back every input still held.

        Jobs being decoded finish (stopping at the deadline where they can)
        and give their bytes back themselves.
        """
        self._pool._close(self._request)


class DecodePool:
    def __init__(self, threads: int, budget: MemoryBudget, request_share: int) -> None:
        if threads < 1:
            raise ValueError(f"the decode pool needs at least one thread, not {threads}")
        self.budget = budget
        self.request_share = request_share
        self._requests: deque[_Request] = deque()  # the round: the next one served first
        self._changed = threading.Condition()
        self._stopping = False
        self._threads = [
            threading.Thread(target=self._serve, name=f"decode-{n}", daemon=True)
            for n in range(threads)
        ]
        for thread in self._threads:
            thread.start()

    def submit(self, jobs: list[DecodeJob], deadline: float) -> RequestDecodes:
        """Queue one request's jobs; each job's ``future`` gets its model input or error."""
        request = _Request(deque(jobs), deadline, all_jobs=list(jobs))
        with self._changed:
            if self._stopping:
                raise RuntimeError("the decode pool is closed")
            if jobs:
                self._requests.append(request)
                self._changed.notify_all()
        return RequestDecodes(self, request)

    def close(self) -> None:
        """Stop the threads once the items being decoded are done; fail the others."""
        with self._changed:
            self._stopping = True
            for request in self._requests:
                for job in request.jobs:
                    job.future.cancel()
            self._requests.clear()
            self._changed.notify_all()

    # ------------------------------------------------------------------ the threads

    def _serve(self) -> None:
        while (picked := self._next()) is not None:
            request, job = picked
            if not job.future.set_running_or_notify_cancel():
                continue
            try:
                job.future.set_result(self._decode(request, job))
            except BaseException as err:  # the item's own error, reported to its request
                job.future.set_exception(err)

    def _next(self) -> tuple[_Request, DecodeJob] | None:
        """The next job, round robin over the requests; None once the pool is closed.

        A request that holds its share of the budget waits its turn until it
        gives some back, unless nothing else is waiting.
        """
        with self._changed:
            while True:
                if self._stopping:
                    return None
                request = self._pick()
                if request is not None:
                    job = request.jobs.popleft()
                    if request.jobs:
                        self._requests.append(request)  # to the back of the round
                    return request, job
                self._changed.wait()

    def _pick(self) -> _Request | None:
        """Take the first request in the round that is under its share (else the first)."""
        if not self._requests:
            return None
        for position, request in enumerate(self._requests):
            if request.held < self.request_share:
                del self._requests[position]
                return request
        return self._requests.popleft()

    def _decode(self, request: _Request, job: DecodeJob) -> torch.Tensor:
        if job.cost is None:
            job.cost = job.inspect()
        needed = job.cost + job.keep
        self._reserve(request, needed)
        try:
            output = job.run()
        except BaseException:
            self._give(request, needed)
            raise
        with self._changed:
            job.holds_output = not request.closed
        self._give(request, job.cost if job.holds_output else needed)
        return output

    def _reserve(self, request: _Request, count: int) -> None:
        """Take ``count`` bytes for ``request``: within its share (or alone), then the server's."""
        with self._changed:
            while request.held and request.held + count > self.request_share:
                remaining = request.deadline - self.budget.clock()
                if remaining <= 0 or request.closed:
                    raise DeadlineExceeded()
                self._changed.wait(min(remaining, 1.0))
            request.held += count  # claimed before waiting for the server, so the share holds
        if not self.budget.take(count, request.deadline):
            with self._changed:
                request.held -= count
                self._changed.notify_all()
            raise DeadlineExceeded()

    def _give(self, request: _Request, count: int) -> None:
        self.budget.give(count)
        with self._changed:
            request.held -= count
            self._changed.notify_all()

    def _release_output(self, request: _Request, job: DecodeJob) -> None:
        with self._changed:
            if not job.holds_output:
                return
            job.holds_output = False
        self._give(request, job.keep)

    def _close(self, request: _Request) -> None:
        with self._changed:
            request.closed = True
            for job in request.jobs:
                job.future.cancel()
            request.jobs.clear()
            if request in self._requests:
                self._requests.remove(request)
            self._changed.notify_all()
        for job in request.all_jobs:
            self._release_output(request, job)
