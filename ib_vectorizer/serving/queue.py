"""The batching queue: per-modality FIFOs from which model replicas take batches.

It knows nothing of HTTP or asyncio. Producers ``put`` work items, each with a
``concurrent.futures.Future``; replica threads call ``next_batch``, which
blocks until a batch is worth running: ``max_batch_views`` views are waiting,
or the oldest item has waited ``max_wait_s``. Batches are sized in views
(an audio item is 3 encoder passes, a video item 15), so one batch costs about
the same whatever its modality. Items past their deadline are failed with
:class:`DeadlineExceeded` instead of being computed for nobody.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field

import torch

from ..modalities import Modality


class DeadlineExceeded(Exception):
    """The item waited longer than its request allowed."""


@dataclass
class WorkItem:
    modality: Modality
    inputs: torch.Tensor  # one item's model input (views included)
    deadline: float  # on the queue's clock
    future: Future = field(default_factory=Future)
    enqueued_at: float = 0.0

    @property
    def views(self) -> int:
        return self.modality.views_per_item


class BatchQueue:
    def __init__(
        self,
        max_batch_views: int,
        max_wait_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_batch_views = max_batch_views
        self.max_wait_s = max_wait_s
        self.clock = clock
        self._queues: dict[Modality, deque[WorkItem]] = {m: deque() for m in Modality}
        self._cond = threading.Condition()
        self._closed = False

    def put(self, items: list[WorkItem]) -> None:
        """Enqueue all of a request's items at once (they then batch together)."""
        with self._cond:
            if self._closed:
                raise RuntimeError("queue is closed")
            now = self.clock()
            for item in items:
                item.enqueued_at = now
                self._queues[item.modality].append(item)
            self._cond.notify_all()

    def depth(self) -> dict[Modality, int]:
        """Items waiting per modality (for metrics)."""
        with self._cond:
            return {m: len(q) for m, q in self._queues.items()}

    def close(self) -> None:
        """Wake every replica; they drain what is queued, then get ``None``."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def next_batch(self) -> list[WorkItem] | None:
        """Block until a batch is due; ``None`` once closed and empty."""
        with self._cond:
            while True:
                now = self.clock()
                self._expire(now)
                modality = self._oldest_modality()
                if modality is None:
                    if self._closed:
                        return None
                    self._cond.wait()
                    continue
                queue = self._queues[modality]
                waited = now - queue[0].enqueued_at
                waiting_views = sum(item.views for item in queue)
                if (
                    self._closed
                    or waiting_views >= self.max_batch_views
                    or (waited >= self.max_wait_s)
                ):
                    batch = self._take(queue)
                    if batch:
                        return batch
                    continue
                self._cond.wait(self.max_wait_s - waited)

    def _oldest_modality(self) -> Modality | None:
        heads = [(q[0].enqueued_at, m) for m, q in self._queues.items() if q]
        return min(heads, key=lambda head: head[0])[1] if heads else None

    def _take(self, queue: deque[WorkItem]) -> list[WorkItem]:
        """Up to ``max_batch_views`` views (always at least one item); skip cancelled ones."""
        batch: list[WorkItem] = []
        views = 0
        while queue and (not batch or views + queue[0].views <= self.max_batch_views):
            item = queue.popleft()
            if item.future.set_running_or_notify_cancel():
                batch.append(item)
                views += item.views
        return batch

    def _expire(self, now: float) -> None:
        """Fail expired items at the queue heads (deadlines grow with arrival order)."""
        for queue in self._queues.values():
            while queue and queue[0].deadline <= now:
                item = queue.popleft()
                if item.future.set_running_or_notify_cancel():
                    item.future.set_exception(DeadlineExceeded())
