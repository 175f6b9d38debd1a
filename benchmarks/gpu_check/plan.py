"""What one run measures and how long each step may take: the GPU plan and the dry run's.

The GPU plan is sized for an H200 lent for minutes: every step has a budget
and the whole run stays under 8 minutes. The dry run is the same run with
the tiny fixture model on the CPU, small batches and short windows, so that a
change to the check is tried here before a GPU is spent on it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from ib_vectorizer.modalities import Modality

ROOT = Path(__file__).resolve().parents[2]
TINY_FIXTURE = ROOT / "tests" / "fixtures" / "imagebind-tiny"

# H200 dense fp16/bf16 tensor-core rate; a bf16 8192³ matmul measured 769–798 TFLOP/s there.
H200_PEAK_TFLOPS = 790.0

STEPS = ("setup", "parity", "model", "compiled", "server")


@dataclass(frozen=True)
class Plan:
    """Everything a run depends on; ``budgets`` are seconds per step (see :data:`STEPS`)."""

    dry_run: bool
    model: str  # a preset name or the path of a config.json
    checkpoint: Path | None  # weights to load; None: random weights drawn on the device
    device: str
    throughput_dtype: str  # the dtype the model step and the server run in
    batch_sizes: dict[Modality, tuple[int, ...]]
    parity_items: int  # items per modality compared across dtypes
    reference_items: int  # of those, items also run on the CPU (video: one)
    min_point_s: float  # shortest measuring window of one throughput point
    compile_backend: str
    concurrency: tuple[int, ...]  # one-item clients driving the server
    server_max_batch: int  # IB_MAX_BATCH, in views
    server_memory_mb: int  # IB_MEMORY_BUDGET_MB: video at 256 clients holds ~5 GB decoded
    budgets: dict[str, float]
    total_s: float  # the whole run, which later steps shrink to fit
    peak_tflops: float | None
    seed: int = 0
    low_precision: tuple[str, ...] = ("float16", "bfloat16")
    notes: list[str] = field(default_factory=list)

    def batches(self, modality: Modality) -> tuple[int, ...]:
        return self.batch_sizes[modality]


def _sizes(vision: tuple[int, ...], video: tuple[int, ...], rest: tuple[int, ...]):
    return {
        m: vision if m is Modality.VISION else video if m is Modality.VIDEO else rest
        for m in Modality
    }


def gpu_plan() -> Plan:
    """imagebind_huge with random weights on CUDA, sized to fit 8 minutes on an H200."""
    return Plan(
        dry_run=False,
        model="imagebind_huge",
        checkpoint=None,
        device="cuda",
        throughput_dtype="float16",
        # A video item is 15 views of the vision tower: 32 items are 480 views already,
        # and the server's batches (IB_MAX_BATCH views) hold far fewer.
        batch_sizes=_sizes((1, 8, 32, 128, 256, 512), (1, 8, 32), (1, 8, 32, 128)),
        parity_items=8,
        reference_items=2,
        min_point_s=0.4,
        compile_backend="inductor",
        concurrency=(64, 256),
        server_max_batch=128,
        server_memory_mb=16384,
        budgets={"setup": 40, "parity": 50, "model": 50, "compiled": 140, "server": 180},
        total_s=470,
        peak_tflops=H200_PEAK_TFLOPS,
        notes=[
            "video batches stop at 32 items (480 views of the vision tower)",
            "GPU float32 runs with PyTorch's defaults: no TF32 in matmuls, TF32 in cuDNN convs",
        ],
    )


def dry_plan() -> Plan:
    """The tiny fixture model on the CPU: every step, in seconds, with no CUDA."""
    return Plan(
        dry_run=True,
        model=str(TINY_FIXTURE / "config.json"),
        checkpoint=TINY_FIXTURE / "state_dict.pt",
        device="cpu",
        # As on the GPU, low precision under autocast (bfloat16: the CPU's fast half type).
        throughput_dtype="bfloat16",
        batch_sizes=_sizes((1, 4, 16), (1, 2), (1, 4, 16)),
        parity_items=4,
        reference_items=2,
        min_point_s=0.05,
        # Inductor takes 10-25 s per encoder on two cores: the dry run traces with
        # dynamo and runs the graphs eagerly, which exercises the step, not the codegen.
        compile_backend="eager",
        concurrency=(4, 16),
        server_max_batch=32,
        server_memory_mb=4096,
        budgets={"setup": 15, "parity": 20, "model": 20, "compiled": 40, "server": 70},
        total_s=170,
        peak_tflops=None,
        notes=[
            "dry run: tiny fixture model on the CPU; float16 and bfloat16 run on the CPU too",
            "dry run: throughput and the server in bfloat16 (float16 on the GPU)",
            "dry run: the CPU reference is a copy of the model on the same CPU",
            "dry run: compiled with the 'eager' backend (dynamo traces, no code generated)",
            "dry run: no CUDA, so no memory peaks and no share of a GPU's peak",
        ],
    )


class Clock:
    """Seconds since the run started, and what is left of a step's budget and of the run.

    ``offset_s``: how far the run had got when this clock started (a worker
    process stamps its lines in the run's time), counted in neither total.
    """

    def __init__(self, total_s: float, offset_s: float = 0.0) -> None:
        self.started = time.monotonic()
        self.total_s = total_s
        self.offset_s = offset_s

    def elapsed(self) -> float:
        return time.monotonic() - self.started + self.offset_s

    def left(self) -> float:
        return self.total_s - (time.monotonic() - self.started)

    def budget(self, wanted_s: float, keep_for_later_s: float = 0.0) -> float:
        """``wanted_s``, cut so that ``keep_for_later_s`` is left for the steps after."""
        return max(1.0, min(wanted_s, self.left() - keep_for_later_s))


def progress(clock: Clock | None, message: str) -> None:
    """One line per stage, flushed at once: a run killed at its limit shows how far it got."""
    stamp = f"{clock.elapsed():6.1f}s" if clock is not None else "   -   "
    print(f"[gpu-check {stamp}] {message}", flush=True)
