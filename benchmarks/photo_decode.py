"""Photo decoding, exact against fast, in one run: ``python -m benchmarks.photo_decode``.

For photos of 2, 5 and 12 megapixels (``--megapixels``) it times the whole
image preprocessing (decode, resize, crop, normalise) in both modes of
``IB_IMAGE_DECODE``, interleaved so both see the same machine, and prints the
median milliseconds, the speed-up, and how far the fast input is from the
exact one (mean, rms and max |Δ| in normalised units). For scale it prints the
difference that saving the same photo again at JPEG quality 95 makes to the
exact input: noise every photo pipeline already has.

Photos are synthetic (``image_payload`` of ``ib-vectorizer bench``: colour
gradients under noise, quality 90) unless ``--photos`` names real JPEG files.
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch


def _time_ms(function: Callable[[], object]) -> float:
    started = time.perf_counter()
    function()
    return 1000 * (time.perf_counter() - started)


def _difference(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float, float]:
    delta = (a - b).abs()
    return delta.mean().item(), delta.pow(2).mean().sqrt().item(), delta.max().item()


def compare(name: str, data: bytes, size: int, repeats: int) -> str:
    """One table row: both modes' median times and how far apart their inputs are."""
    from PIL import Image

    from ib_vectorizer.preprocess.image import load_image

    exact_ms, fast_ms = [], []
    for _ in range(repeats):  # interleaved: both modes see the same load on the machine
        exact_ms.append(_time_ms(lambda: load_image(data, size, "exact")))
        fast_ms.append(_time_ms(lambda: load_image(data, size, "fast")))
    exact, fast = load_image(data, size, "exact"), load_image(data, size, "fast")
    buffer = io.BytesIO()
    Image.open(io.BytesIO(data)).save(buffer, "JPEG", quality=95)
    again = load_image(buffer.getvalue(), size, "exact")
    e, f = statistics.median(exact_ms), statistics.median(fast_ms)
    mean, rms, worst = _difference(fast, exact)
    re_mean, re_rms, _ = _difference(again, exact)
    return (
        f"| {name} | {e:.1f} | {f:.1f} | {e / f:.1f}× | {mean:.4f} / {rms:.4f} / {worst:.3f} "
        f"| {re_mean:.4f} / {re_rms:.4f} |"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.photo_decode", description=__doc__)
    parser.add_argument("--megapixels", type=float, nargs="+", default=[2.0, 5.0, 12.0])
    parser.add_argument("--photos", type=Path, nargs="*", default=[], help="real JPEGs to add")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--size", type=int, default=224, help="the model's image size")
    args = parser.parse_args(argv)

    import torch

    from ib_vectorizer.bench.payloads import image_payload
    from ib_vectorizer.bench.report import cpu_model

    torch.set_num_threads(1)  # one core per photo, as a decode worker has
    rng = np.random.default_rng(0)
    inputs = []
    for megapixels in args.megapixels:
        width = int((megapixels * 1e6 * 4 / 3) ** 0.5)
        height = width * 3 // 4
        name = f"{width}×{height} ({megapixels:g} MP)"
        inputs.append((name, image_payload(rng, (width, height))))
    inputs += [(path.name, path.read_bytes()) for path in args.photos]
    print(f"machine: {cpu_model()}; median of {args.repeats}, one thread")
    print(
        "| photo | exact ms | fast ms | speed-up | fast − exact: mean / rms / max |Δ| "
        "| re-saved at q95: mean / rms |Δ| |"
    )
    print("|---|---:|---:|---:|---|---|")
    for name, data in inputs:
        print(compare(name, data, args.size, args.repeats))
    return 0


if __name__ == "__main__":
    sys.exit(main())
