"""``ib-search``: a search page for a collection, served by aiohttp.

The page and its script and style sheet are files of this package
(``static/``): no CDN, no external font. Behind the page is a small JSON API
(``/api/...``) whose every failure is a 4xx (or 502/503 for Weaviate) with an
``error`` field the page shows.

A search is one query (text, a file, "more like this"), a text query fused
with keyword search (hybrid, ``alpha``), or up to three weighted items
composed into one vector, which needs our inference server
(``--vectorizer-url``, or the local stack's). With ``--tenant`` every query
and media read goes to that tenant of multi-tenant collections.

Every response carries ``X-Content-Type-Options: nosniff`` and a
Content-Security-Policy (the page may load only its own files and media; any
other response may run nothing). Without an API key the server answers only
requests addressed to this machine (127.0.0.1, localhost: no DNS rebinding);
listening wider needs ``--api-key``, sent as ``Authorization: Bearer KEY`` or,
for a browser, set once as a cookie by visiting ``/?key=KEY``.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import ipaddress
import json
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

from aiohttp import web

from ib_vectorizer.options import ModelOptions, add_flags
from ib_vectorizer.retry import first_line

from ..command import (
    DATA_DIR_HELP,
    CommandError,
    CommandParser,
    add_weaviate_flags,
    console_logging,
    fail,
)
from ..connection import parse_nodes
from ..query import connect
from .access import MediaFile, MediaRoots
from .api import SearchService
from .errors import ApiError

log = logging.getLogger(__name__)

STATIC = Path(__file__).with_name("static")
MAX_UPLOAD_BYTES = 100 << 20  # a query file, base64 in JSON
MAX_JSON_DEPTH = 8  # a search request nests 3 levels: {items: [{...}]}
SEND_CHUNK_BYTES = 256 << 10
KEY_COOKIE = "ib_search_session"
API_KEY_ENV = "IB_SEARCH_API_KEY"
# Anything but the page runs nothing, even if a browser opens it on its own.
LOCKED_POLICY = "default-src 'none'; sandbox; frame-ancestors 'none'"
NEEDS_KEY = (
    "ib-search needs its API key: open the page once as /?key=KEY, or send "
    "'Authorization: Bearer KEY'"
)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class Guard:
    """Who may use the server: anyone holding ``api_key``, or without one, this machine only."""

    api_key: str | None
    page_policy: str  # the page's Content-Security-Policy

    @property
    def session(self) -> str:
        """The cookie a browser gets for the key: derived from it, so the cookie is not the key."""
        key = (self.api_key or "").encode("utf-8", "surrogateescape")
        return hmac.new(key, b"ib-search page session", hashlib.sha256).hexdigest()

    def admits(self, request: web.Request) -> bool:
        if self.api_key is None:
            return True
        header = request.headers.get("Authorization", "")
        bearer = header[len("Bearer ") :].strip() if header.startswith("Bearer ") else ""
        if bearer:
            return _same(bearer, self.api_key)
        return _same(request.cookies.get(KEY_COOKIE, ""), self.session)


SERVICE = web.AppKey("service", SearchService)
GUARD = web.AppKey("guard", Guard)


def page_policy(media_roots: MediaRoots) -> str:
    """The page's Content-Security-Policy: its own script, style and media, plus the origins of
    ``--media-root`` URL prefixes that media may be redirected to."""
    origins = "".join(
        f" {origin}" for origin in dict.fromkeys(p.origin for p in media_roots.url_prefixes)
    )
    return (
        "default-src 'none'; script-src 'self'; style-src 'self'; "
        f"img-src 'self'{origins}; media-src 'self'{origins}; connect-src 'self'{origins}; "
        "form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
    )


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or address, maybe with a port) is this machine only."""
    try:
        names = (host, urlsplit(f"//{host}").hostname or "")
    except ValueError:  # a malformed [IPv6] address
        return False
    for name in names:
        if name.lower() == "localhost":
            return True
        try:
            return ipaddress.ip_address(name.strip("[]")).is_loopback
        except ValueError:
            continue
    return False


def _same(given: str, expected: str) -> bool:
    """Compared in constant time, so the answer's timing does not tell how much matched."""
    return hmac.compare_digest(
        given.encode("utf-8", "surrogateescape"), expected.encode("utf-8", "surrogateescape")
    )


def error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"error": message}, status=status, headers=headers)


def refusal(request: web.Request, status: int, message: str) -> web.Response:
    """JSON for the API, one line of text for anything else."""
    if request.path.startswith("/api/"):
        return error(status, message)
    return web.Response(status=status, text=message + "\n")


@web.middleware
async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The API key (the page itself and its files are open: they hold no data), or, without
    one, requests addressed to this machine only."""
    allowed = request.app[GUARD]
    if allowed.api_key is None and not is_loopback(request.host):
        return refusal(
            request,
            403,
            f"ib-search answers requests for 127.0.0.1 or localhost only, not {request.host}: "
            "start it with --api-key to reach it under another name",
        )
    if request.path.startswith("/api/") and not allowed.admits(request):
        return error(401, NEEDS_KEY, {"WWW-Authenticate": 'Bearer realm="ib-search"'})
    return await handler(request)


async def security_headers(request: web.Request, response: web.StreamResponse) -> None:
    """On every response: never sniffed into another type, and a tight policy."""
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    policy = request.app[GUARD].page_policy if request.path == "/" else LOCKED_POLICY
    response.headers["Content-Security-Policy"] = policy


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


async def index(request: web.Request) -> web.StreamResponse:
    """The page; ``/?key=KEY`` sets the session cookie and redirects to the address without it."""
    allowed = request.app[GUARD]
    given = request.query.get("key")
    if given is not None and allowed.api_key is not None:
        if not _same(given, allowed.api_key):
            return refusal(request, 401, "wrong API key: open /?key=KEY with ib-search's --api-key")
        rest = [(name, value) for name, value in request.query.items() if name != "key"]
        response = web.Response(
            status=303, headers={"Location": ("/?" + urlencode(rest)) if rest else "/"}
        )
        response.set_cookie(
            KEY_COOKIE,
            allowed.session,
            httponly=True,
            samesite="Strict",
            secure=request.secure,
            path="/",
        )
        return response
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
    body = parse_json_body(await request.read())
    service = request.app[SERVICE]
    return web.json_response(await asyncio.to_thread(service.search, body))


def parse_json_body(raw: bytes) -> Any:
    """The body as JSON, nested at most MAX_JSON_DEPTH levels; ApiError 400 otherwise."""
    too_deep = ApiError(
        400,
        f"the request body nests deeper than {MAX_JSON_DEPTH} levels: a search is "
        "{collection, text | media | near_id | items: [{...}], offset, limit, filter: {...}}",
    )
    try:
        body = json.loads(raw)
    except RecursionError:
        raise too_deep from None
    except ValueError as err:  # bad JSON, bad UTF-8, a number too long to read
        raise ApiError(400, f"the request body is not valid JSON: {first_line(err)}") from None
    levels = [(body, 1)]
    while levels:
        value, depth = levels.pop()
        if isinstance(value, dict | list):
            if depth > MAX_JSON_DEPTH:
                raise too_deep
            children = value.values() if isinstance(value, dict) else value
            levels.extend((child, depth + 1) for child in children)
    return body


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
    if found.file is not None:
        try:
            return await send_file(request, found.file, headers)
        finally:
            found.file.close()
    if found.url is not None:
        raise web.HTTPFound(found.url)
    return web.Response(body=found.data, content_type=found.content_type, headers=headers)


async def send_file(
    request: web.Request, file: MediaFile, headers: dict[str, str]
) -> web.StreamResponse:
    """The file already opened and checked, whole or the byte range asked for (players seek).

    Sent from the open file, not by its name again, so what was checked is what is sent.
    """
    size = file.size  # more than 0: an empty file is no media type
    try:
        wanted = request.http_range  # slice(None, None) without a Range header
    except ValueError:
        wanted = slice(size, None)  # unreadable: answered as not satisfiable
    if wanted.start is None:
        status, start, stop = 200, 0, size
    elif wanted.start < 0:  # the last -start bytes
        status, start, stop = 206, max(size + wanted.start, 0), size
    else:
        status, start, stop = 206, wanted.start, min(wanted.stop or size, size)
    if start >= size:
        message = f"the range {request.headers.get('Range')} is not within the {size} bytes"
        return error(416, message, {"Content-Range": f"bytes */{size}"})
    response = web.StreamResponse(status=status, headers=headers)
    response.headers["Accept-Ranges"] = "bytes"
    if status == 206:
        response.headers["Content-Range"] = f"bytes {start}-{stop - 1}/{size}"
    response.content_type = file.content_type
    response.content_length = stop - start
    await response.prepare(request)
    offset = start
    try:
        while request.method != "HEAD" and offset < stop:
            count = min(SEND_CHUNK_BYTES, stop - offset)
            chunk = await asyncio.to_thread(file.read_at, offset, count)
            if not chunk:
                break  # the file shrank since it was opened
            await response.write(chunk)
            offset += len(chunk)
        await response.write_eof()
    except ConnectionResetError:  # the player stopped reading (a seek, a closed page)
        pass
    return response


async def unknown_api(request: web.Request) -> web.Response:
    return error(404, f"no API at {request.path}")


def make_app(service: SearchService, api_key: str | None = None) -> web.Application:
    app = web.Application(middlewares=[guard, json_errors], client_max_size=MAX_UPLOAD_BYTES)
    app[SERVICE] = service
    app[GUARD] = Guard(api_key or None, page_policy(service.media_roots))
    app.on_response_prepare.append(security_headers)
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
    parser.add_argument("--data-dir", help=DATA_DIR_HELP)
    parser.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (beyond this machine only with --api-key)",
    )
    parser.add_argument("--port", type=int, default=0, help="port to listen on (0: a free one)")
    parser.add_argument(
        "--api-key",
        default=os.environ.get(API_KEY_ENV),
        help="the key the page and API need (browser: open /?key=KEY once; API clients: "
        f"'Authorization: Bearer KEY'); needed to listen beyond 127.0.0.1 (default: "
        f"${API_KEY_ENV})",
    )
    parser.add_argument(
        "--media-root",
        action="append",
        default=[],
        metavar="DIR_OR_URL",
        help="also serve stored <field>_uri media under this folder, or redirect to it under this "
        "http(s) URL prefix (repeatable); the folders a collection was ingested from are served "
        "without it",
    )
    parser.add_argument(
        "--tenant",
        help="search this tenant of multi-tenant collections: every query and media read goes "
        "to it",
    )
    parser.add_argument(
        "--vectorizer-url",
        help="our inference server (the one Weaviate's multi2vec-bind uses), which embeds the "
        "items of composed queries (default: the local stack's; with --weaviate-url and "
        "without it, the page offers single queries only)",
    )
    add_flags(parser.add_argument_group("the local stack's model"), ModelOptions)
    return parser


def make_service(args: argparse.Namespace, resources: ExitStack) -> SearchService:
    """With --weaviate-url, a service that connects (and reconnects) when asked; else the
    local stack: the running ib-stack, or one started here (a failure to start it is a
    start-up error)."""
    roots = MediaRoots.from_flags(args.media_root)
    if args.weaviate_url:
        parse_nodes(args.weaviate_url, args.grpc_port)  # a malformed flag fails now

        def reconnect():
            with ExitStack() as attempt:
                client = connect(args, attempt)
                attempt.pop_all()  # the client outlives this attempt
            return client

        where = f"Weaviate at {args.weaviate_url}"
        service = SearchService(
            reconnect,
            args.collection,
            args.consistency_level,
            where,
            roots,
            tenant=args.tenant,
            vectorizer_url=args.vectorizer_url,
        )
    else:
        client = connect(args, resources)  # sets --vectorizer-url to the stack's, if not given
        service = SearchService(
            lambda: client,
            args.collection,
            args.consistency_level,
            media_roots=roots,
            tenant=args.tenant,
            vectorizer_url=args.vectorizer_url,
        )
    resources.callback(service.close)
    return service


async def serve(app: web.Application, host: str, port: int) -> None:
    """Listen until SIGTERM or SIGINT; the first line on stdout is the page's address."""
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
    if app[GUARD].api_key is not None:
        print(
            f"open http://{shown}:{bound}/?key=KEY once in a browser (KEY: --api-key)", flush=True
        )
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
    if not args.api_key and not is_loopback(args.host):
        return fail(
            "ib-search",
            f"--host {args.host or '(every address)'} makes the page reachable from other "
            f"machines: give it a key with --api-key KEY (or {API_KEY_ENV}), or listen on "
            "127.0.0.1",
        )
    try:
        with ExitStack() as resources:
            service = make_service(args, resources)
            try:
                service.info(args.collection)
            except ApiError as err:
                if err.status != 503:  # an unreachable Weaviate is shown on the page
                    raise CommandError(err.message) from None
                log.warning("%s; the page will say so until it answers", err.message)
            asyncio.run(serve(make_app(service, args.api_key), args.host, args.port))
    except (CommandError, ValueError) as err:
        return fail("ib-search", str(err))
    return 0


if __name__ == "__main__":
    sys.exit(main())
