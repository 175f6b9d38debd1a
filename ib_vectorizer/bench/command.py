"""``ib-vectorizer bench``: throughput and latency under Weaviate's traffic pattern.

The subcommand ties the pieces together: it starts the servers to measure (or
finds running ones), drives every scenario on each with the closed-loop
driver, prints the figures as they come and a summary at the end. By default
it starts the server twice on this machine, batched and then baseline (one
request at a time, like the reference container), with the same settings, so
the speedup it prints compares like with like; ``--url`` drives a running
server instead.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import os
import signal
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..options import ModelOptions, add_flags, as_env, from_sources
from ..server_process import READY_PATH, ServerProcess, ServerStartError, http_status
from .driver import Load, measure, mix_name, parse_mix
from .payloads import DEFAULT_IMAGE_SIZE, PayloadError, make_bodies
from .report import (
    machine_info,
    machine_line,
    print_summary,
    result_line,
    scenario_report,
    server_line,
    summarize,
)

EXIT_FAILED = 1
REFUSED_GRACE_S = 30.0  # how long a --url server may still be starting up before we give up


class BenchError(Exception):
    """A failure that ends the benchmark with a message instead of a traceback."""


def _mix_arg(text: str) -> dict[str, float]:
    try:
        return parse_mix(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _size_arg(text: str) -> tuple[int, int]:
    width, _, height = text.lower().partition("x")
    if not (width.isdigit() and height.isdigit() and int(width) > 0 and int(height) > 0):
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT such as 1600x1200, not {text!r}")
    return int(width), int(height)


def add_bench_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "bench",
        help="measure throughput and latency under Weaviate's one-item-per-request load",
        description=(
            "N concurrent clients, each sending one item per request in a closed loop. By "
            "default starts the server twice (batched, then baseline) with the same settings "
            "and prints the speedup; --url drives a running server instead."
        ),
    )
    target = parser.add_argument_group("target")
    target.add_argument("--url", default=None, help="drive this running server (no baseline)")
    target.add_argument(
        "--baseline-url", default=None, help="with --url: a running baseline server to compare"
    )
    target.add_argument(
        "--api-key",
        default=os.environ.get("IB_API_KEY") or None,
        help="sent as 'Authorization: Bearer KEY' (env IB_API_KEY)",
    )

    server = parser.add_argument_group("started servers (without --url)")
    add_flags(server, ModelOptions)
    server.add_argument("--max-batch", type=int, default=None, help="IB_MAX_BATCH of the servers")
    server.add_argument(
        "--max-wait-ms", type=float, default=None, help="IB_MAX_WAIT_MS of the servers"
    )
    server.add_argument(
        "--preprocess-workers", type=int, default=None, help="IB_PREPROCESS_WORKERS"
    )
    server.add_argument(
        "--startup-timeout", type=float, default=600.0, help="seconds to wait for ready"
    )
    server.add_argument("--server-log-level", default="WARNING", help="IB_LOG_LEVEL of the servers")
    server.add_argument(
        "--server-logs",
        type=Path,
        default=None,
        help="keep the servers' output in DIR/server-MODE.log (default: discarded)",
    )

    load = parser.add_argument_group("load")
    load.add_argument("--concurrency", type=int, default=32, help="concurrent clients (32)")
    load.add_argument(
        "--requests", type=int, default=None, help="measured requests per scenario (512)"
    )
    load.add_argument(
        "--duration", type=float, default=None, help="measure for at most this many seconds"
    )
    load.add_argument(
        "--warmup-requests",
        type=int,
        default=None,
        help="uncounted requests before each measurement (default 2 × concurrency)",
    )
    load.add_argument(
        "--mix",
        type=_mix_arg,
        action="append",
        default=None,
        help="modality=weight,... over image, text, audio, video, depth, thermal, imu "
        "(default image=1); repeat for several scenarios",
    )
    load.add_argument(
        "--image-size",
        type=_size_arg,
        default=DEFAULT_IMAGE_SIZE,
        metavar="WxH",
        help="pixels of the image payloads (640x480; phone photos are 1600x1200 to 4000x3000)",
    )
    load.add_argument("--seed", type=int, default=0, help="payloads and request draws")
    load.add_argument(
        "--request-timeout", type=float, default=300.0, help="seconds before a request fails"
    )
    load.add_argument(
        "--max-error-rate",
        type=float,
        default=0.01,
        help="fail (exit 1) when more than this fraction of requests fail (0.01)",
    )
    parser.add_argument("--json", type=Path, default=None, help="also write results as JSON")
    parser.set_defaults(run=run_bench)


# -------------------------------------------------------------------------------- settings


def load_from(args: argparse.Namespace) -> Load:
    """Validated load settings; ``--requests`` defaults to 512 unless ``--duration`` is set."""
    if args.concurrency < 1:
        raise BenchError("--concurrency must be at least 1")
    requests = args.requests
    if requests is None and args.duration is None:
        requests = 512
    if requests is not None and requests < 1:
        raise BenchError("--requests must be at least 1")
    if args.duration is not None and args.duration <= 0:
        raise BenchError("--duration must be positive")
    warmup = 2 * args.concurrency if args.warmup_requests is None else args.warmup_requests
    if warmup < 0:
        raise BenchError("--warmup-requests must be at least 0")
    return Load(args.concurrency, requests, args.duration, warmup, args.request_timeout, args.seed)


def model_options(args: argparse.Namespace) -> ModelOptions:
    """The started servers' model: flags, then the environment, then the defaults.

    ``--checkpoint`` on the command line beats ``IB_RANDOM_WEIGHTS`` from the
    environment; both flags together are a mistake.
    """
    try:
        options = from_sources(ModelOptions, args)
    except ValueError as err:
        raise BenchError(str(err)) from None
    if args.checkpoint is not None and options.random_weights:
        if args.random_weights is not None:
            raise BenchError("give --checkpoint or --random-weights, not both")
        options = dataclasses.replace(options, random_weights=False)
    return options


def server_env(args: argparse.Namespace, options: ModelOptions, mode: str) -> dict[str, str]:
    """What a started server gets on top of this environment: the model and forwarded settings."""
    env = as_env(options)
    forwarded = {
        "IB_MAX_BATCH": args.max_batch,
        "IB_MAX_WAIT_MS": args.max_wait_ms,
        "IB_PREPROCESS_WORKERS": args.preprocess_workers,
        "IB_API_KEY": args.api_key,
    }
    env.update({name: str(value) for name, value in forwarded.items() if value is not None})
    env.update({"IB_MODE": mode, "IB_LOG_LEVEL": args.server_log_level})
    return env


# --------------------------------------------------------------------------------- servers


@dataclass
class Target:
    """A server to measure: started by us (``mode``) or already running (``url``)."""

    label: str
    mode: str | None = None
    url: str | None = None


def targets_from(args: argparse.Namespace) -> list[Target]:
    if args.baseline_url and not args.url:
        raise BenchError("--baseline-url needs --url")
    if args.url:
        if args.baseline_url:
            return [Target("batched", url=args.url), Target("baseline", url=args.baseline_url)]
        return [Target("server", url=args.url)]
    return [Target("batched", mode="batched"), Target("baseline", mode="baseline")]


def fetch_meta(base_url: str, headers: dict[str, str]) -> dict[str, Any]:
    """The server's ``/meta`` (model, device, ...), recorded with the results."""
    request = urllib.request.Request(base_url.rstrip("/") + "/meta", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())
    except (urllib.error.URLError, OSError, ValueError) as err:
        return {"error": f"/meta unavailable: {err}"}


def wait_external(url: str, headers: dict[str, str], timeout_s: float) -> None:
    """A server we did not start: wait while it loads, but not long if nothing listens."""
    start = time.monotonic()
    refused_for_s = min(REFUSED_GRACE_S, timeout_s)
    while True:
        status = http_status(url.rstrip("/") + READY_PATH, headers)
        if status == 204:
            return
        waited = time.monotonic() - start
        if status is None and waited > refused_for_s:
            raise BenchError(f"nothing answers at {url} (waited {refused_for_s:g} s)")
        if waited > timeout_s:
            raise BenchError(f"{url} was not ready after {timeout_s:g} s (last status {status})")
        time.sleep(0.5)


@contextlib.contextmanager
def running(
    target: Target,
    args: argparse.Namespace,
    options: ModelOptions | None,
    headers: dict[str, str],
) -> Iterator[tuple[str, dict[str, Any]]]:
    """The target's URL and /meta while it runs; a started server is stopped afterwards."""
    if target.url is not None:
        wait_external(target.url, headers, args.startup_timeout)
        meta = fetch_meta(target.url, headers)
        if (
            target.label in ("batched", "baseline")
            and meta.get("mode", target.label) != target.label
        ):
            progress(f"warning: the {target.label} URL reports mode {meta['mode']!r}")
        yield target.url, meta
        return
    assert target.mode is not None and options is not None
    log_path = None
    if args.server_logs is not None:
        log_path = args.server_logs / f"server-{target.mode}.log"
        log_path.unlink(missing_ok=True)  # this run's output only
    env = server_env(args, options, target.mode)
    with ServerProcess(env, log_path=log_path, name=f"{target.mode} server") as server:
        progress(f"starting the {target.mode} server on {server.url} ...")
        server.wait_ready(args.startup_timeout)
        meta = fetch_meta(server.url, headers)
        if meta.get("mode", target.mode) != target.mode:
            raise BenchError(f"asked for a {target.mode} server, /meta says {meta['mode']!r}")
        yield server.url, meta


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """A SIGTERM to the bench unwinds like Ctrl+C, so the servers it started get stopped."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------- command


def run_bench(args: argparse.Namespace) -> int:
    """Measure every scenario on every target; 0 if all ran with few enough errors."""
    try:
        with sigterm_as_interrupt():
            report = benchmark(args)
    except (BenchError, PayloadError, ServerStartError) as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_FAILED
    failed = [
        f"{scenario['name']} on {label}: {result['errors']}/{result['requests']} failed"
        for scenario in report["scenarios"]
        for label, result in scenario["results"].items()
        if result["requests"] == 0 or result["errors"] > args.max_error_rate * result["requests"]
    ]
    if failed:
        print("error: too many failed requests: " + "; ".join(failed), file=sys.stderr)
        return EXIT_FAILED
    return 0


def benchmark(args: argparse.Namespace) -> dict[str, Any]:
    """Run the benchmark, print the results as they come, and return them all."""
    load = load_from(args)
    targets = targets_from(args)
    options = model_options(args) if args.url is None else None
    mixes = {mix_name(mix): mix for mix in args.mix or [parse_mix("image=1")]}
    headers = {"Content-Type": "application/json"}
    if args.api_key:
        headers["Authorization"] = f"Bearer {args.api_key}"
    probe_headers = {k: v for k, v in headers.items() if k == "Authorization"}

    device = options.device if options is not None else args.device
    first_of_devices = os.environ.get("IB_DEVICES", "").split(",")[0].strip()
    machine = machine_info(device or os.environ.get("IB_DEVICE") or first_of_devices or None)
    print(machine_line(machine), flush=True)
    if options is not None:
        print(f"model: {options.model}", flush=True)
    how = f"{load.requests} requests" if load.requests else f"{load.duration_s:g} s"
    print(
        f"load: {load.concurrency} concurrent clients, one item per request, {how} per scenario "
        f"after {load.warmup_requests} warm-up requests",
        flush=True,
    )
    progress("generating payloads ...")
    kinds = {kind for mix in mixes.values() for kind in mix}
    bodies = make_bodies(kinds, seed=load.seed, image_size=args.image_size)

    results: dict[str, dict[str, dict[str, Any]]] = {name: {} for name in mixes}
    servers: dict[str, dict[str, Any]] = {}
    for target in targets:
        with running(target, args, options, probe_headers) as (url, meta):
            servers[target.label] = {"url": url, "mode": target.mode, "meta": meta}
            print(server_line(target.label, url, meta), flush=True)
            for name, mix in mixes.items():
                progress(f"measuring {name} on {target.label} ...")
                samples, wall_s = asyncio.run(measure(url, mix, bodies, load, headers))
                result = summarize(samples, wall_s)
                results[name][target.label] = result
                print(f"[{name}]", result_line(target.label, result).strip(), flush=True)
                for error in result["error_samples"]:
                    print(f"    error: {error}", flush=True)

    report = {
        "machine": machine,
        "load": dataclasses.asdict(load),
        "servers": servers,
        "scenarios": [scenario_report(name, mixes[name], results[name]) for name in mixes],
    }
    print_summary(report)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
        progress(f"wrote {args.json}")
    return report
