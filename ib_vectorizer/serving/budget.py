"""The server's memory budget: bytes of request data held at once, taken before allocating.

Request bodies take their bytes as they arrive; decoding takes what an item's
header says it will need, plus its model input, before it starts; the input
is given back once its vector is computed. Nothing is allocated on credit, so
no item and no sequence of items takes the process past the budget.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

_LONGEST_WAIT_S = 1.0  # waits are re-checked at least this often


class MemoryBudget:
    """A thread-safe count of bytes free out of ``total``."""

    def __init__(self, total: int, clock: Callable[[], float] = time.monotonic) -> None:
        if total < 1:
            raise ValueError(f"a memory budget needs at least one byte, not {total}")
        self.total = total
        self.clock = clock
        self._used = 0
        self._freed = threading.Condition()

    @property
    def used(self) -> int:
        return self._used

    @property
    def available(self) -> int:
        return self.total - self._used

    def try_take(self, count: int) -> bool:
        """Take ``count`` bytes if they are free now; never waits."""
        with self._freed:
            if self._used + count > self.total:
                return False
            self._used += count
            return True

    def take(self, count: int, deadline: float) -> bool:
        """Wait until ``count`` bytes are free and take them; False once ``deadline`` passes.

        ``count`` more than the whole budget never fits: False at once.
        """
        with self._freed:
            while self._used + count > self.total:
                remaining = deadline - self.clock()
                if count > self.total or remaining <= 0:
                    return False
                self._freed.wait(min(remaining, _LONGEST_WAIT_S))
            self._used += count
            return True

    def give(self, count: int) -> None:
        """Give back bytes taken before."""
        with self._freed:
            self._used -= count
            self._freed.notify_all()
