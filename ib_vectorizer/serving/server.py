"""Run the server: listen first, load the model in the background, drain on SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import signal
import sys
import threading

from aiohttp import web

from .engine import Engine, create_engine
from .http import create_app
from .metrics import ServerMetrics
from .settings import ServerSettings

log = logging.getLogger(__name__)

DRAIN_TIMEOUT_S = 60.0
# Blocks of this size and more are mapped on their own and unmapped when freed.
MMAP_THRESHOLD_BYTES = 4 << 20
_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter


def give_freed_memory_back() -> None:
    """Make glibc's malloc return freed decode buffers to the system.

    By default glibc raises its mmap threshold to the largest block freed so
    far (up to 32 MiB), and its trim threshold with it, so the memory of large
    decodes in several threads stays with the process: ten concurrent decodes
    of 230-410 MiB each left it 1.5 GiB larger, and the next ones came on top.
    A fixed threshold keeps both where they are. Elsewhere, a no-op.
    """
    if sys.platform.startswith("linux"):
        # Not glibc (musl): no mallopt, and its malloc gives memory back anyway.
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6").mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)


async def serve(settings: ServerSettings, stop: asyncio.Event | None = None) -> int:
    """Serve until SIGTERM/SIGINT (or ``stop`` is set); returns the exit status.

    The port opens at once, so ``/.well-known/live`` answers while the model
    loads; ``/.well-known/ready`` turns 204 only once it is loaded and warm.
    On a signal, ready turns 503, requests in flight finish, then we exit.
    """
    give_freed_memory_back()
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)

    engine = create_engine(settings, ServerMetrics())
    app = create_app(engine, api_key=settings.api_key)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=DRAIN_TIMEOUT_S)
    await runner.setup()
    site = web.TCPSite(runner, settings.host, settings.port, reuse_address=True)
    await site.start()
    log.info("listening on http://%s:%d (mode %s)", settings.host, settings.port, settings.mode)

    # A daemon thread: a SIGTERM during a long checkpoint load need not wait for it.
    threading.Thread(target=engine.load, name="model-loader", daemon=True).start()
    loading = asyncio.create_task(_wait_for(engine.loaded))
    stopping = asyncio.create_task(stop.wait())
    await asyncio.wait([stopping, loading], return_when=asyncio.FIRST_COMPLETED)
    if engine.state != "failed":
        await stopping  # loaded: serve until told to stop
    status = 1 if engine.state == "failed" else 0

    log.info("shutting down: ready now 503, finishing %d request(s) in flight", engine.in_flight)
    engine.drain()
    await _wait_idle(engine, DRAIN_TIMEOUT_S)
    await runner.cleanup()
    if engine.loaded.is_set():
        engine.close()
    else:
        log.info("model still loading; exiting without waiting for it")
    log.info("stopped")
    return status


async def _wait_idle(engine: Engine, timeout_s: float) -> None:
    """Keep listening (ready answers 503) until no request is in flight."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while engine.in_flight and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.05)
    if engine.in_flight:
        log.warning(
            "%d request(s) still in flight after %g s; stopping anyway", engine.in_flight, timeout_s
        )


async def _wait_for(event: threading.Event) -> None:
    """Await a thread's event without parking an executor thread on it."""
    while not event.is_set():
        await asyncio.sleep(0.05)
