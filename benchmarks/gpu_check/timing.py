"""Timing one model call at one batch size: warm-ups excluded, CUDA timed with events.

CUDA runs asynchronously, so a wall clock around a launch measures the
launch. Calls are timed back to back between two CUDA events (after warm-up
calls, which load kernels, pick cuBLAS/cuDNN algorithms or compile), which
is the rate a busy server's replica sees. The first call is timed on its own
too: with ``torch.compile`` it holds the compile.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch

GIB = 1 << 30


@dataclass(frozen=True)
class Point:
    """One batch size's figures."""

    batch: int
    ms_per_batch: float
    items_per_s: float
    calls: int
    first_call_s: float
    peak_mem_gib: float | None  # CUDA only: torch.cuda.max_memory_allocated during the point
    activation_gib: float | None  # the peak less what was allocated before (weights, inputs)

    def as_dict(self) -> dict[str, float | int | None]:
        return {k: round(v, 4) if isinstance(v, float) else v for k, v in asdict(self).items()}


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(
    call: Callable[[], object],
    batch: int,
    device: torch.device,
    min_s: float,
    warmups: int = 2,
    min_calls: int = 3,
    max_calls: int = 200,
) -> Point:
    """Time ``call`` (one batch of ``batch`` items) for at least ``min_s`` seconds.

    The number of timed calls comes from one calibration call, within
    [``min_calls``, ``max_calls``].
    """
    cuda = device.type == "cuda"
    before = 0
    if cuda:
        synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
    started = time.perf_counter()
    call()
    synchronize(device)
    first_s = time.perf_counter() - started
    for _ in range(warmups - 1):
        call()
    synchronize(device)
    started = time.perf_counter()
    call()
    synchronize(device)
    one_s = max(time.perf_counter() - started, 1e-6)
    calls = min(max_calls, max(min_calls, math.ceil(min_s / one_s)))
    if cuda:
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(calls):
            call()
        end.record()
        end.synchronize()
        total_s = start.elapsed_time(end) / 1000.0
    else:
        started = time.perf_counter()
        for _ in range(calls):
            call()
        total_s = time.perf_counter() - started
    per_call_s = total_s / calls
    peak = activation = None
    if cuda:
        peak_bytes = torch.cuda.max_memory_allocated(device)
        peak, activation = peak_bytes / GIB, (peak_bytes - before) / GIB
    return Point(
        batch=batch,
        ms_per_batch=per_call_s * 1000.0,
        items_per_s=batch / per_call_s,
        calls=calls,
        first_call_s=first_s,
        peak_mem_gib=peak,
        activation_gib=activation,
    )
