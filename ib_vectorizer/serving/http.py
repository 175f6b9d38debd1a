"""The HTTP layer: Weaviate's ``multi2vec-bind`` protocol over aiohttp.

Routes: ``/.well-known/live``, ``/.well-known/ready`` (answered at once from
the event loop), ``/meta``, ``/vectorize``, ``/metrics``. Every answer other
than 200/204 is a JSON object with an ``error`` string, because Weaviate's
client reports exactly that field.

A body is read as it arrives, its bytes taken from the server's memory budget
(503 when it is spent) and held until the request is answered; a client that
sends nothing for ``IB_BODY_TIMEOUT_S`` gets 408 and loses its connection, so
stalled uploads hold neither memory nor anyone else's turn.
"""

from __future__ import annotations

import asyncio
import functools
import hmac
import json
import logging
import time
from collections.abc import Awaitable, Callable

from aiohttp import web

from ..errors import InputError
from ..modalities import Modality
from .engine import Engine, NotReady, Overloaded
from .protocol import REQUEST_KEYS, RESPONSE_KEYS, WIRE_NAME
from .queue import DeadlineExceeded

log = logging.getLogger(__name__)

PARSE_INLINE_BYTES = 256 * 1024
OPEN_PATHS = ("/.well-known/live", "/.well-known/ready")
_STRICT_JSON = functools.partial(json.dumps, allow_nan=False)  # NaN is not JSON

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class RequestError(Exception):
    """A client error with its HTTP status."""

    def __init__(self, status: int, message: str, kind: str, headers: dict | None = None):
        super().__init__(message)
        self.status = status
        self.kind = kind
        self.headers = headers or {}


def error_response(status: int, message: str, headers: dict | None = None) -> web.Response:
    return web.json_response({"error": message}, status=status, headers=headers)


def parse_vectorize_body(body: bytes, max_items: int) -> dict[Modality, list[str]]:
    """The request JSON → items per modality, or a RequestError saying what is wrong."""
    try:
        payload = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise RequestError(400, f"request body is not valid JSON: {err}", "bad_json") from None
    except RecursionError:
        raise RequestError(400, "request body is nested too deeply", "bad_json") from None
    if not isinstance(payload, dict):
        raise RequestError(400, "request body must be a JSON object", "bad_json")
    unknown = sorted(set(payload) - set(REQUEST_KEYS))
    if unknown:
        raise RequestError(
            400,
            f"unknown field(s) {', '.join(map(repr, unknown))}; expected any of "
            f"{', '.join(REQUEST_KEYS)}",
            "bad_request",
        )
    items: dict[Modality, list[str]] = {}
    for key, modality in REQUEST_KEYS.items():
        values = payload.get(key)
        if values is None:
            values = []
        if not isinstance(values, list):
            raise RequestError(400, f"'{key}' must be a list of strings", "bad_request")
        for index, value in enumerate(values):
            if not isinstance(value, str):
                raise RequestError(
                    400,
                    f"{key}[{index}]: must be a string, not {type(value).__name__}",
                    "bad_request",
                )
        items[modality] = values
    count = sum(map(len, items.values()))
    if count > max_items:
        raise RequestError(
            413,
            f"request has {count} items; the limit is {max_items} (IB_MAX_ITEMS, IB_MAX_QUEUE)",
            "too_large",
        )
    return items


def vectorize_response(vectors: dict) -> web.Response:
    body = {RESPONSE_KEYS[m]: vectors[m].tolist() if m in vectors else [] for m in RESPONSE_KEYS}
    return web.json_response(body, dumps=_STRICT_JSON)


def _spent() -> RequestError:
    return RequestError(
        503,
        "the server's memory budget is spent (IB_MEMORY_BUDGET_MB); retry shortly",
        "overloaded",
        {"Retry-After": "1"},
    )


class BodyReader:
    """Reads request bodies within the memory budget and the body timeout.

    ``read`` returns the body and how many budget bytes it holds for it (give
    them back with ``engine.budget.give`` once the request is answered).
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    async def read(self, request: web.Request) -> tuple[bytes, int]:
        settings, budget = self.engine.settings, self.engine.budget
        limit = settings.max_body_bytes
        if request.content_length is not None and request.content_length > limit:
            raise web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=request.content_length)
        chunks: list[bytes] = []
        held = 0
        try:
            async with asyncio.timeout(settings.request_timeout_s):
                while chunk := await asyncio.wait_for(
                    request.content.readany(), settings.body_timeout_s
                ):
                    if held + len(chunk) > limit:
                        raise web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=held)
                    if not budget.try_take(len(chunk)):
                        raise _spent()
                    held += len(chunk)
                    chunks.append(chunk)
        except BaseException as err:
            budget.give(held)
            if isinstance(err, TimeoutError):
                raise RequestError(
                    408,
                    f"request body not received: nothing arrived for "
                    f"{settings.body_timeout_s:g} s (IB_BODY_TIMEOUT_S)",
                    "body_timeout",
                ) from None
            raise
        return b"".join(chunks), held


def create_app(engine: Engine, api_key: str | None = None) -> web.Application:
    metrics = engine.metrics

    @web.middleware
    async def errors_as_json(request: web.Request, handler: Handler) -> web.StreamResponse:
        started = time.perf_counter()
        try:
            if api_key and request.path not in OPEN_PATHS:
                _check_api_key(request, api_key)
            response = await handler(request)
        except RequestError as err:
            metrics.errors.labels(err.kind).inc()
            response = error_response(err.status, str(err), err.headers)
        except web.HTTPRequestEntityTooLarge:
            metrics.errors.labels("too_large").inc()
            response = error_response(
                413,
                f"request body is larger than the limit of {engine.settings.max_body_mb:g} MiB "
                "(IB_MAX_BODY_MB)",
            )
        except web.HTTPException as err:  # 404, 405, ... as JSON too
            allow = {"Allow": err.headers["Allow"]} if "Allow" in err.headers else None
            message = f"{err.reason}: {request.method} {request.path}"
            response = error_response(err.status, message, allow)
        except Exception:
            log.exception("unexpected error on %s %s", request.method, request.path)
            metrics.errors.labels("internal").inc()
            response = error_response(500, "internal server error; see the server log")
        if response.status in (408, 413):
            response.force_close()  # the rest of the body is not read: nothing else may follow
        metrics.requests.labels(_path_label(request), str(response.status)).inc()
        if request.path == "/vectorize":
            metrics.request_seconds.observe(time.perf_counter() - started)
        return response

    async def live(_: web.Request) -> web.Response:
        return web.Response(status=204)

    async def ready(_: web.Request) -> web.Response:
        if not engine.ready:
            return web.Response(status=503)
        busy = engine.busy()
        if busy is not None:
            return error_response(503, f"not taking work now: {busy}", {"Retry-After": "1"})
        return web.Response(status=204)

    async def meta(_: web.Request) -> web.Response:
        return web.json_response(engine.meta())

    async def prometheus(_: web.Request) -> web.Response:
        return web.Response(body=metrics.render(), content_type="text/plain", charset="utf-8")

    # Big JSON is parsed off the event loop, so /.well-known/ready keeps answering at once;
    # while it is, the body and its parsed strings both exist: the budget holds both.
    bodies = BodyReader(engine)

    async def vectorize(request: web.Request) -> web.Response:
        body, held = await bodies.read(request)
        try:
            strings = len(body)  # what the parsed items take: about the body's size again
            if not engine.budget.try_take(strings):
                raise _spent()
            held += strings
            try:
                if len(body) > PARSE_INLINE_BYTES:
                    items = await asyncio.get_running_loop().run_in_executor(
                        None, parse_vectorize_body, body, engine.max_request_items
                    )
                else:
                    items = parse_vectorize_body(body, engine.max_request_items)
            finally:
                engine.budget.give(held - strings)  # the body itself is dropped now
                held, body = strings, b""
            return await _embed(items)
        finally:
            engine.budget.give(held)

    async def _embed(items) -> web.Response:
        try:
            vectors = await engine.embed(items)
        except InputError as err:
            where = f"{WIRE_NAME[Modality(err.modality)]}[{err.index}]"
            raise RequestError(400, f"{where}: {err.reason}", "bad_input") from None
        except Overloaded as err:
            retry = {"Retry-After": str(max(1, round(err.retry_after_s)))}
            raise RequestError(503, str(err), "overloaded", retry) from None
        except DeadlineExceeded:
            limit = engine.settings.request_timeout_s
            message = f"request not finished within {limit:g} s (IB_REQUEST_TIMEOUT_S)"
            raise RequestError(504, message, "timeout") from None
        except NotReady as err:
            retry = {"Retry-After": "5"}
            raise RequestError(503, f"model not ready ({err})", "not_ready", retry) from None
        return vectorize_response(vectors)

    app = web.Application(
        middlewares=[errors_as_json], client_max_size=engine.settings.max_body_bytes
    )
    app.router.add_get("/.well-known/live", live)  # add_get answers HEAD too
    app.router.add_get("/.well-known/ready", ready)
    app.router.add_get("/meta", meta)
    app.router.add_get("/metrics", prometheus)
    app.router.add_post("/vectorize", vectorize)
    return app


def _check_api_key(request: web.Request, api_key: str) -> None:
    header = request.headers.get("Authorization", "")
    given = header.removeprefix("Bearer ").strip() if header.startswith("Bearer ") else ""
    given = given or request.headers.get("X-API-Key", "")
    encoded = given.encode("utf-8", "surrogateescape")
    if not hmac.compare_digest(encoded, api_key.encode("utf-8", "surrogateescape")):
        raise RequestError(401, "missing or wrong API key (Authorization: Bearer KEY)", "auth")


def _path_label(request: web.Request) -> str:
    route = request.match_info.route.resource
    return route.canonical if route is not None else "other"
