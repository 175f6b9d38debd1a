"""``ib-search``: a search page for a collection, served by aiohttp.

The page and its script and style sheet are files of this package
(``static/``): no CDN, no external font. Behind the page is a small JSON API
(``/api/...``) whose every failure is a 4xx (or 502/503 for Weaviate) with an
``error`` field the page shows.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
from collections.abc import Awaitable, Callable, Sequence
from contextlib import ExitStack
from pathlib import Path

from aiohttp import web

from ib_vectorizer.options import ModelOptions, add_flags
from ib_vectorizer.retry import first_line

from ..command import CommandError, CommandParser, add_weaviate_flags, console_logging, fail
from ..connection import parse_nodes
from ..query import connect
from .api import ApiError, SearchService

log = logging.getLogger(__name__)

STATIC = Path(__file__).with_name("static")
MAX_UPLOAD_BYTES = 100 << 20  # a query file, base64 in JSON
SERVICE = web.AppKey("service", SearchService)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


@web.middleware
async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """API failures as ``{"error": ...}``: ours, aiohttp's (404, 413, ...) and surprises."""
    try:
        return await handler(request)
    except ApiError as err:
        return error(err.status, err.message)
    except web.HTTPException as err:
        if not request.path.startswith("/api/") or err.status < 400:
            raise
        reason = err.text if err.text and not err.text.startswith(str(err.status)) else err.reason
        if err.status == 413:
            reason = f"the file is too large: at most {MAX_UPLOAD_BYTES >> 20} MiB"
        return error(err.status, reason)
    except Exception as err:
        log.exception("%s %s failed", request.method, request.path)
        return error(500, f"{type(err).__name__}: {first_line(err)}")


async def index(request: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})


async def collections(request: web.Request) -> web.Response:
    service = request.app[SERVICE]
    return web.json_response(await asyncio.to_thread(service.collections))


async def info(request: web.Request) -> web.Response:
    name = request.query.get("collection")
    if not name:
        raise ApiError(400, "'collection' is missing: /api/info?collection=NAME")
    service = request.app[SERVICE]
    return web.json_response(await asyncio.to_thread(service.info, name))


async def search(request: web.Request) -> web.Response:
    try:
        body = json.loads(await request.read())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ApiError(400, f"the request body is not valid JSON: {err}") from None
    service = request.app[SERVICE]
    return web.json_response(await asyncio.to_thread(service.search, body))


async def media(request: web.Request) -> web.StreamResponse:
    service = request.app[SERVICE]
    thumbnail = request.query.get("thumb") == "1"
    found = await asyncio.to_thread(
        service.media,
        request.match_info["collection"],
        request.match_info["id"],
        request.match_info["field"],
        thumbnail,
    )
    headers = {"Cache-Control": "private, max-age=300"}
    if found.url is not None:
        raise web.HTTPFound(found.url)
    if found.path is not None:  # ranges, so players can seek
        return web.FileResponse(found.path, headers={**headers, "Content-Type": found.content_type})
    return web.Response(body=found.data, content_type=found.content_type, headers=headers)


async def unknown_api(request: web.Request) -> web.Response:
    return error(404, f"no API at {request.path}")


def make_app(service: SearchService) -> web.Application:
    app = web.Application(middlewares=[json_errors], client_max_size=MAX_UPLOAD_BYTES)
    app[SERVICE] = service
    app.router.add_get("/", index)
    app.router.add_get("/api/collections", collections)
    app.router.add_get("/api/info", info)
    app.router.add_post("/api/search", search)
    app.router.add_get("/api/media/{collection}/{id}/{field}", media)
    app.router.add_route("*", "/api/{tail:.*}", unknown_api)
    app.router.add_static("/static/", STATIC, append_version=False)
    return app


def build_parser() -> argparse.ArgumentParser:
    parser = CommandParser(
        prog="ib-search", description="A search page for a multi2vec-bind collection."
    )
    parser.add_argument("--collection", required=True, help="the collection the page opens on")
    add_weaviate_flags(parser, "replicas that must answer alike")
    parser.add_argument("--data-dir", help="the local stack's data directory")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=0, help="port to listen on (0: a free one)")
    add_flags(parser.add_argument_group("the local stack's model"), ModelOptions)
    return parser


def make_service(args: argparse.Namespace, resources: ExitStack) -> SearchService:
    """With --weaviate-url, a service that connects (and reconnects) when asked; else the
    local stack, started here (a failure to start it is a start-up error)."""
    if args.weaviate_url:
        parse_nodes(args.weaviate_url, args.grpc_port)  # a malformed flag fails now

        def reconnect():
            with ExitStack() as attempt:
                client = connect(args, attempt)
                attempt.pop_all()  # the client outlives this attempt
            return client

        where = f"Weaviate at {args.weaviate_url}"
        service = SearchService(reconnect, args.collection, args.consistency_level, where)
    else:
        client = connect(args, resources)
        service = SearchService(lambda: client, args.collection, args.consistency_level)
    resources.callback(service.close)
    return service


async def serve(app: web.Application, host: str, port: int) -> None:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    try:
        await site.start()
    except OSError as err:
        await runner.cleanup()
        raise CommandError(f"cannot listen on {host}:{port}: {err.strerror}") from None
    bound = runner.addresses[0][1]
    shown = "127.0.0.1" if host in ("0.0.0.0", "") else host
    print(f"search page: http://{shown}:{bound}/", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def main(argv: Sequence[str] | None = None) -> int:
    console_logging(logging.WARNING)
    args = build_parser().parse_args(argv)
    if not 0 <= args.port <= 65535:
        return fail("ib-search", f"--port {args.port} is not a port (0 to 65535)")
    try:
        with ExitStack() as resources:
            service = make_service(args, resources)
            try:
                service.info(args.collection)
            except ApiError as err:
                if err.status != 503:  # an unreachable Weaviate is shown on the page
                    raise CommandError(err.message) from None
                log.warning("%s; the page will say so until it answers", err.message)
            asyncio.run(serve(make_app(service), args.host, args.port))
    except (CommandError, ValueError) as err:
        return fail("ib-search", str(err))
    return 0


if __name__ == "__main__":
    sys.exit(main())
