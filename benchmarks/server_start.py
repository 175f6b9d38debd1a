"""Time from ``ib-vectorizer serve`` starting to ready, and the first requests after it.

An autoscaled replica takes no traffic until ``/.well-known/ready`` answers
204, so what the server does before that is paid on every scale-up. This
starts the real server (a child process) once per ``IB_WARM_UP`` mode and page
cache state, measures process start → first 204, then sends each modality two
one-item requests (different payloads) and times both: a first request much
slower than the second is start-up cost the warm-up left to the client.

The baseline, measured in the same run, is ``modalities`` (every modality
embedded once before ready); ``none`` is the checkpoint load alone. ``cold``
evicts the checkpoint from the page cache first (``posix_fadvise``), as on a
freshly started machine; ``warm`` leaves it where the previous run left it.

    python -m benchmarks.server_start --checkpoint /tmp/imagebind_huge_random.pth

A checkpoint path that does not exist is first filled with random weights for
``--model`` (about 35 s and 4.8 GB for imagebind_huge).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import statistics
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from ib_vectorizer.bench.payloads import make_pool, request_body
from ib_vectorizer.modalities import Modality
from ib_vectorizer.server_process import ServerProcess

MODES = ("modalities", "weights", "none")
CACHES = ("warm", "cold")
BASELINE = "modalities"
_READY_LINE = re.compile(r"loaded in ([\d.]+) s, warmed up \(([^)]*)\) in ([\d.]+) s")


@dataclass
class Start:
    """One server start: how long each phase took, and each modality's two request times."""

    mode: str
    cache: str
    ready_s: float
    load_s: float | None = None
    warm_s: float | None = None
    requests_s: dict[str, tuple[float, float]] = field(default_factory=dict)


def machine() -> str:
    """The processor and core count, for the figures' record."""
    name = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    return f"{name}, {os.cpu_count()} cores"


def write_random_checkpoint(model: str, path: Path) -> None:
    """Random weights for ``model`` saved as a plain state_dict, written atomically."""
    import torch

    from ib_vectorizer.model import create_model

    started = time.perf_counter()
    net = create_model(model, random_seed=0)
    partial = path.with_name(path.name + ".part")
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(net.state_dict(), partial)
    os.replace(partial, path)
    print(f"wrote random weights to {path} in {time.perf_counter() - started:.1f} s")


def evict_from_page_cache(path: Path) -> None:
    """Drop the file's cached pages (no root needed), so the next reader goes to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def post_seconds(url: str, body: bytes) -> float:
    """Seconds one /vectorize request takes; fails unless it answers 200."""
    request = urllib.request.Request(
        url + "/vectorize", data=body, headers={"Content-Type": "application/json"}
    )
    started = time.perf_counter()
    with urllib.request.urlopen(request, timeout=600) as response:
        json.loads(response.read())
        assert response.status == 200, response.status
    return time.perf_counter() - started


def start_server(
    env: dict[str, str],
    checkpoint: Path,
    mode: str,
    cache: str,
    bodies: dict[str, list[bytes]],
) -> Start:
    """Start the server, time it to ready, send two requests per modality, stop it."""
    if cache == "cold":
        evict_from_page_cache(checkpoint)
    server = ServerProcess({**env, "IB_WARM_UP": mode, "IB_LOG_LEVEL": "INFO"})
    started = time.perf_counter()
    try:
        server.start()
        server.wait_ready()
        result = Start(mode, cache, time.perf_counter() - started)
        if match := _READY_LINE.search(server.log_tail(200)):
            result.load_s, result.warm_s = float(match.group(1)), float(match.group(3))
        for kind, (first, second) in bodies.items():
            result.requests_s[kind] = (
                post_seconds(server.url, first),
                post_seconds(server.url, second),
            )
    finally:
        server.stop()
    return result


def median_start(starts: list[Start]) -> Start:
    """The median of each figure over the rounds (medians of different rounds, one per figure)."""

    def middle(values: list[float | None]) -> float | None:
        known = [v for v in values if v is not None]
        return statistics.median(known) if known else None

    first = starts[0]
    return Start(
        first.mode,
        first.cache,
        statistics.median(s.ready_s for s in starts),
        middle([s.load_s for s in starts]),
        middle([s.warm_s for s in starts]),
        {
            kind: (
                statistics.median(s.requests_s[kind][0] for s in starts),
                statistics.median(s.requests_s[kind][1] for s in starts),
            )
            for kind in first.requests_s
        },
    )


def seconds(value: float | None) -> str:
    return "—" if value is None else f"{value:.1f}"


def report(starts: list[Start], kinds: list[str]) -> None:
    """A table of the starts, then time-to-ready against the baseline of the same cache state."""
    print(f"\nmachine: {machine()}")
    header = "| warm-up | page cache | to ready s | load s | warm-up s |"
    header += "".join(f" {kind} 1st / 2nd s |" for kind in kinds)
    print("\n" + header)
    print("|---|---|---:|---:|---:|" + "---:|" * len(kinds))
    for s in starts:
        row = f"| {s.mode} | {s.cache} | {s.ready_s:.1f} | {seconds(s.load_s)} | "
        row += f"{seconds(s.warm_s)} |"
        row += "".join(" {:.2f} / {:.2f} |".format(*s.requests_s[kind]) for kind in kinds)
        print(row)
    print()
    for cache in CACHES:
        base = next((s for s in starts if s.mode == BASELINE and s.cache == cache), None)
        for s in starts:
            if base is not None and s.cache == cache and s is not base:
                print(
                    f"{cache} cache: {s.mode} ready in {s.ready_s:.1f} s, "
                    f"{s.ready_s / base.ready_s:.3f}x the {BASELINE} warm-up's {base.ready_s:.1f} s"
                )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, required=True, help="created if missing")
    parser.add_argument("--model", default="imagebind_huge", help="preset or config.json")
    parser.add_argument("--device", default="cpu", help="IB_DEVICE of the server")
    parser.add_argument("--quantize", default="none", help="IB_QUANTIZE of the server")
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--cache", nargs="+", choices=CACHES, default=list(CACHES))
    parser.add_argument(
        "--requests",
        nargs="+",
        default=["image", "text", "audio"],
        help="modalities whose first two requests are timed after ready",
    )
    parser.add_argument("--rounds", type=int, default=1, help="starts per mode; medians shown")
    args = parser.parse_args(argv)
    if not args.checkpoint.exists():
        write_random_checkpoint(args.model, args.checkpoint)
    env = {"IB_MODEL": args.model, "IB_CHECKPOINT": str(args.checkpoint), "IB_DEVICE": args.device}
    env["IB_QUANTIZE"] = args.quantize
    bodies = {}
    for kind in args.requests:
        first, second = make_pool(kind, count=2)
        bodies[Modality.parse(kind).label] = (request_body(kind, first), request_body(kind, second))
    runs: dict[tuple[str, str], list[Start]] = {}
    for round_number in range(1, args.rounds + 1):  # interleaved, so load changes hit all alike
        for mode in args.modes:
            for cache in args.cache:
                start = start_server(env, args.checkpoint, mode, cache, bodies)
                runs.setdefault((mode, cache), []).append(start)
                print(
                    f"round {round_number}: {mode}, {cache} cache: ready in {start.ready_s:.1f} s",
                    flush=True,
                )
    report([median_start(starts) for starts in runs.values()], list(bodies))


if __name__ == "__main__":
    main()
