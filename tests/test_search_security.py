"""ib-search sends only what it should: planted objects, hostile requests and the API key.

A collection is ingested with ``--store-uri`` from a folder by the real
``ib-ingest`` (which records that folder as the collection's media root). Then
objects are planted straight into the real Weaviate, as anyone allowed to
write objects could: URIs of system files, ``../`` escapes, a link out of the
root, /proc, a pipe, HTML, foreign URLs, a BLOB of HTML, an image bomb. Each
is asked of a running ``ib-search`` over real HTTP and must be refused without
its bytes; the legitimate media beside them is still sent, with ranges. Every
response read here is checked for ``X-Content-Type-Options: nosniff``.
"""

from __future__ import annotations

import base64
import http.client
import io
import json
import os
import shutil
import struct
import subprocess
import sys
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, urlsplit

import pytest
from PIL import Image
from playwright.sync_api import expect, sync_playwright

from pipelines.schema import MEDIA_ROOTS_LINE, recorded_media_roots

from .conftest import CHROMIUM
from .fixture_data import INPUTS
from .test_ingest import run_ingest
from .test_search_page import ROOT, SearchServer

COLLECTION = "Vault"
SECRET = b"ib-search-test-secret-bytes"  # appended to files that must never be sent
API_KEY = "correct horse battery staple"
PLANTED = "planted/"  # source_id prefix of the hostile objects
NO_ID = "00000000-0000-0000-0000-000000000000"


# -- HTTP, without following redirects -----------------------------------------------------------


@dataclass
class Answer:
    status: int
    headers: http.client.HTTPMessage
    body: bytes

    def json(self) -> dict:
        return json.loads(self.body)


def fetch(
    base: str,
    path: str,
    *,
    method: str = "GET",
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> Answer:
    """One real HTTP request to ``base`` + ``path``; every answer must say nosniff."""
    address = urlsplit(base)
    connection = http.client.HTTPConnection(address.hostname, address.port, timeout=30)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        answer = Answer(response.status, response.headers, response.read())
    finally:
        connection.close()
    assert answer.headers["X-Content-Type-Options"] == "nosniff", (path, answer.status)
    return answer


def search(base: str, body: dict, headers: dict[str, str] | None = None) -> Answer:
    return fetch(
        base, "/api/search", method="POST", body=json.dumps(body).encode(), headers=headers
    )


def media_path(uuid: str, field: str = "image", thumb: bool = False) -> str:
    return f"/api/media/{COLLECTION}/{uuid}/{field}" + ("?thumb=1" if thumb else "")


# -- the library, the collection and what is planted in it --------------------------------------


@dataclass(frozen=True)
class Library:
    root: Path  # ingested with --store-uri: its recorded media root
    outside: Path  # a folder nobody recorded
    secret: Path  # outside/secret.jpg: a real JPEG, with SECRET at its end


def png_header(width: int, height: int) -> bytes:
    """A PNG that says it is ``width`` × ``height`` but holds one row: an image bomb's header."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    row = zlib.compress(b"\x00" + b"\x00" * 3 * width)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", row) + chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def library(tmp_path_factory) -> Library:
    base = tmp_path_factory.mktemp("library")
    root, outside = base / "root", base / "outside"
    for relative, fixture in {
        "image/cat.jpg": "image_rgb.jpg",
        "audio/tone.wav": "tone_16k_mono.wav",
        "imu/walk.csv": "imu_2000.csv",
    }.items():
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(INPUTS / fixture, root / relative)
    outside.mkdir()
    secret = outside / "secret.jpg"
    secret.write_bytes((INPUTS / "image_rgb.jpg").read_bytes() + SECRET)
    return Library(root, outside, secret)


@pytest.fixture(scope="module")
def vault(stack, library, tmp_path_factory) -> Library:
    """The library ingested with --store-uri; then the hostile files are put in its root."""
    dead = tmp_path_factory.mktemp("dead") / "vault.jsonl"
    assert run_ingest(stack, library.root, COLLECTION, dead, "--store-uri") == 0
    root = library.root
    (root / "page.html").write_text("<!doctype html><script>alert(document.cookie)</script>")
    (root / "fake.jpg").write_text("<html><body><script>alert(1)</script></body></html>")
    (root / "escape.jpg").symlink_to(library.secret)
    os.mkfifo(root / "pipe.jpg")
    (root / "bomb.png").write_bytes(png_header(8000, 8000))
    photo = io.BytesIO()
    Image.linear_gradient("L").resize((2400, 1800)).convert("RGB").save(photo, "JPEG")
    (root / "photo.jpg").write_bytes(photo.getvalue())
    return library


def hostile_uris(library: Library) -> dict[str, str]:
    """Planted ``image_uri`` values by name; each must be refused."""
    root = library.root
    return {
        "etc-passwd": "/etc/passwd",
        "file-uri": "file:///etc/hostname",
        "dot-dot": f"{root}/../outside/secret.jpg",
        "encoded-dot-dot": f"file://{quote(str(root))}/%2e%2e/outside/secret.jpg",
        "link-out": f"{root}/escape.jpg",
        "proc": "/proc/self/environ",
        "html": f"{root}/page.html",
        "html-named-jpg": f"{root}/fake.jpg",
        "pipe": f"{root}/pipe.jpg",
        "foreign-url": "http://127.0.0.1:9/elsewhere/cat.jpg",
        "bucket": "gs://bucket/cat.jpg",
        "relative": "image/cat.jpg",
        "outside-absolute": str(library.secret),
    }


URL_CASES = {  # planted too; only the first is under --media-root http://media.example/allowed/
    "url-allowed": "http://media.example/allowed/cat.jpg",
    "url-dot-dot": "http://media.example/allowed/../private/cat.jpg",
    "url-encoded-dot-dot": "http://media.example/allowed/%2e%2e/private/cat.jpg",
    "url-lookalike-host": "http://media.example.attacker.test/allowed/cat.jpg",
    "url-lookalike-path": "http://media.example/allowed-not/cat.jpg",
    "url-user-info": "http://media.example@attacker.test/allowed/cat.jpg",
    "url-other-scheme": "https://media.example/allowed/cat.jpg",
    "url-backslash": "http://attacker.test\\@media.example/allowed/cat.jpg",
}


@pytest.fixture(scope="module")
def planted(client, vault) -> dict[str, str]:
    """Hostile objects written straight into Weaviate: name → uuid."""
    collection = client.collections.get(COLLECTION)
    one = collection.query.fetch_objects(limit=1, include_vector=True).objects[0]
    vector = one.vector["imagebind"]
    blobs = {
        "blob-html": b"<!doctype html><script>alert(document.cookie)</script>",
        "blob-bomb": png_header(8000, 8000),
    }
    uuids = {}
    for name, uri in {
        **hostile_uris(vault),
        **URL_CASES,
        "photo": f"{vault.root}/photo.jpg",
    }.items():
        properties = {"source_id": PLANTED + name, "image_uri": uri}
        uuids[name] = str(collection.data.insert(properties, vector={"imagebind": vector}))
    for name, data in blobs.items():
        properties = {"source_id": PLANTED + name, "image": base64.b64encode(data).decode()}
        uuids[name] = str(collection.data.insert(properties, vector={"imagebind": vector}))
    bomb = {"source_id": PLANTED + "bomb-file", "image_uri": f"{vault.root}/bomb.png"}
    uuids["bomb-file"] = str(collection.data.insert(bomb, vector={"imagebind": vector}))
    return uuids


def weaviate_flags(stack) -> list[str]:
    e = stack.endpoints
    return ["--weaviate-url", e.weaviate_http, "--grpc-port", str(e.weaviate_grpc_port)]


@pytest.fixture(scope="module")
def server(stack, planted):
    running = SearchServer("--collection", COLLECTION, *weaviate_flags(stack))
    yield running.url
    running.stop()


@pytest.fixture(scope="module")
def widened(stack, planted, vault):
    """ib-search with a --media-root folder and a --media-root URL prefix."""
    running = SearchServer(
        "--collection",
        COLLECTION,
        "--media-root",
        str(vault.outside),
        "--media-root",
        "http://media.example/allowed/",
        *weaviate_flags(stack),
    )
    yield running.url
    running.stop()


@pytest.fixture(scope="module")
def keyed(stack, planted):
    """ib-search on every address, its key from IB_SEARCH_API_KEY."""
    running = SearchServer(
        "--collection",
        COLLECTION,
        "--host",
        "0.0.0.0",
        *weaviate_flags(stack),
        env={"IB_SEARCH_API_KEY": API_KEY},
    )
    yield running.url
    running.stop()


# -- planted URIs --------------------------------------------------------------------------------

REFUSALS = {  # name → (status, a part of the message)
    "etc-passwd": (403, "outside the media roots"),
    "file-uri": (403, "outside the media roots"),
    "dot-dot": (403, "outside the media roots"),
    "encoded-dot-dot": (403, "outside the media roots"),
    "link-out": (403, "which resolves to"),
    "proc": (403, "system file"),
    "html": (415, "not media the page shows"),
    "html-named-jpg": (415, "not media the page shows"),
    "pipe": (403, "not a regular file"),
    "foreign-url": (403, "--media-root http://127.0.0.1:9/elsewhere/"),
    "bucket": (403, "local files and http(s) URLs"),
    "relative": (403, "not an absolute path"),
    "outside-absolute": (403, "--media-root "),
}


@pytest.mark.parametrize("thumb", [False, True], ids=["whole", "thumbnail"])
@pytest.mark.parametrize("name", sorted(REFUSALS))
def test_a_planted_uri_is_refused_and_its_bytes_never_sent(server, planted, vault, name, thumb):
    answer = fetch(server, media_path(planted[name], thumb=thumb))
    status, message = REFUSALS[name]
    assert answer.status == status, answer.body
    assert answer.headers["Content-Type"].startswith("application/json")
    assert answer.headers["Location"] is None  # never redirected either
    error = answer.json()["error"]
    assert message in error
    assert error.startswith(f"image_uri of object {planted[name]}: ")
    for leaked in (SECRET, b"root:x:0:0", b"PATH=", b"<script>", vault.secret.read_bytes()[:64]):
        assert leaked not in answer.body


def test_outside_the_roots_the_message_says_which_flag_to_add(server, planted, vault):
    error = fetch(server, media_path(planted["outside-absolute"])).json()["error"]
    real_root = os.path.realpath(vault.root)
    assert f"outside the media roots ({real_root})" in error
    assert error.endswith(f"start ib-search with --media-root {os.path.realpath(vault.outside)}")


def test_search_results_say_why_a_planted_medium_is_not_shown(server, planted):
    only = {"property": "source_id", "value": PLANTED + "*"}
    answer = search(server, {"collection": COLLECTION, "text": "x", "limit": 100, "filter": only})
    assert answer.status == 200
    hits = {hit["source_id"][len(PLANTED) :]: hit for hit in answer.json()["results"]}
    assert set(hits) == set(planted)
    for name in [*REFUSALS, "blob-html"]:
        (image,) = [m for m in hits[name]["media"] if m["field"] == "image"]
        assert "url" not in image, name
        assert image["refused"], name
    (photo,) = hits["photo"]["media"]
    assert photo["content_type"] == "image/jpeg"
    assert "refused" not in photo and photo["url"].endswith("/image")


def test_a_blob_holding_html_is_never_sent_as_html(server, planted):
    for thumb in (False, True):
        answer = fetch(server, media_path(planted["blob-html"], thumb=thumb))
        assert answer.status == 415
        assert answer.headers["Content-Type"].startswith("application/json")
        assert b"<script>" not in answer.body
        assert "image of object" in answer.json()["error"]


def test_media_inside_the_recorded_root_is_sent_with_ranges(server, vault):
    only = {"property": "source_id", "value": "audio/tone.wav"}
    hit = search(server, {"collection": COLLECTION, "text": "x", "filter": only}).json()
    (audio,) = [m for m in hit["results"][0]["media"] if m["field"] == "audio"]
    assert audio["uri"] == str(vault.root / "audio/tone.wav")
    assert audio["content_type"] == "audio/wav"
    stored = (vault.root / "audio/tone.wav").read_bytes()

    whole = fetch(server, audio["url"])
    assert (whole.status, whole.headers["Content-Type"], whole.body) == (200, "audio/wav", stored)
    assert whole.headers["Accept-Ranges"] == "bytes"
    part = fetch(server, audio["url"], headers={"Range": "bytes=10-29"})
    assert (part.status, part.body) == (206, stored[10:30])
    assert part.headers["Content-Range"] == f"bytes 10-29/{len(stored)}"
    tail = fetch(server, audio["url"], headers={"Range": "bytes=-16"})
    assert (tail.status, tail.body) == (206, stored[-16:])
    beyond = fetch(server, audio["url"], headers={"Range": f"bytes={len(stored) + 5}-"})
    assert beyond.status == 416
    assert beyond.headers["Content-Range"] == f"bytes */{len(stored)}"


def test_a_large_photo_inside_the_root_is_thumbnailed(server, planted):
    answer = fetch(server, media_path(planted["photo"], thumb=True))
    assert (answer.status, answer.headers["Content-Type"]) == (200, "image/png")
    with Image.open(io.BytesIO(answer.body)) as thumbnail:
        assert thumbnail.size == (320, 240)


@pytest.mark.parametrize("name", ["bomb-file", "blob-bomb"])
def test_an_image_bomb_is_refused_before_it_is_decoded(server, planted, name):
    answer = fetch(server, media_path(planted[name], thumb=True))
    assert answer.status == 413
    assert "too large to thumbnail" in answer.json()["error"]
    assert "when decoded: 8000×8000)" in answer.json()["error"]  # from its header alone


# -- --media-root --------------------------------------------------------------------------------


def test_media_root_serves_the_folder_it_names_and_nothing_else(widened, planted, vault):
    secret = vault.secret.read_bytes()
    for name in ("outside-absolute", "dot-dot", "link-out"):  # all resolve into outside/
        answer = fetch(widened, media_path(planted[name]))
        assert (answer.status, answer.headers["Content-Type"]) == (200, "image/jpeg"), name
        assert answer.body == secret
    for name in ("etc-passwd", "proc", "html", "pipe"):
        assert fetch(widened, media_path(planted[name])).status in (403, 415), name


def test_media_root_redirects_only_under_its_url_prefix(widened, server, planted):
    allowed = fetch(widened, media_path(planted["url-allowed"]))
    assert (allowed.status, allowed.headers["Location"]) == (302, URL_CASES["url-allowed"])
    assert fetch(server, media_path(planted["url-allowed"])).status == 403  # without the flag
    for name in sorted(URL_CASES):
        if name != "url-allowed":
            answer = fetch(widened, media_path(planted[name]))
            assert answer.status == 403, name
            assert answer.headers["Location"] is None, name
    policy = fetch(widened, "/").headers["Content-Security-Policy"]
    assert "img-src 'self' http://media.example;" in policy


@pytest.mark.parametrize(
    ("flag", "message"),
    [
        ("/no/such/folder", "--media-root /no/such/folder: no such folder"),
        ("http://user@media.example/", "not an http(s)://HOST[:PORT]/PATH/ prefix"),
        ("https://media.example/x?y=1", "not an http(s)://HOST[:PORT]/PATH/ prefix"),
    ],
)
def test_a_bad_media_root_is_one_line_at_start(stack, flag, message):
    done = run_search("--collection", COLLECTION, "--media-root", flag, *weaviate_flags(stack))
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1 and message in done.stderr


def run_search(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("IB_SEARCH_API_KEY", None)
    return subprocess.run(
        [sys.executable, "-m", "pipelines.search", "--port", "0", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


# -- roots recorded by ib-ingest -----------------------------------------------------------------


def test_roots_of_several_ingests_accumulate_and_keep_the_description(
    stack, client, server, vault, tmp_path
):
    collection = client.collections.get(COLLECTION)
    first = collection.config.get().description
    assert recorded_media_roots(first) == [str(vault.root)]
    collection.config.update(description="Holiday media, do not delete\n" + first)

    # A manifest in its own folder: one recording beside it, one elsewhere.
    manifest_dir, elsewhere = tmp_path / "manifest", tmp_path / "elsewhere"
    (manifest_dir / "sub").mkdir(parents=True)
    elsewhere.mkdir()
    shutil.copy(INPUTS / "chirp_44k_stereo.wav", manifest_dir / "sub/chirp.wav")
    shutil.copy(INPUTS / "short_8k_mono.wav", elsewhere / "far.wav")
    manifest = manifest_dir / "clips.csv"
    manifest.write_text(f"id,audio\nclip,sub/chirp.wav\nfar,{elsewhere / 'far.wav'}\n")
    assert run_ingest(stack, manifest, COLLECTION, tmp_path / "dead.jsonl", "--store-uri") == 0

    description = collection.config.get().description
    assert description.startswith("Holiday media, do not delete\n" + MEDIA_ROOTS_LINE)
    assert recorded_media_roots(description) == [str(vault.root), str(manifest_dir)]

    def audio_of(source_id: str) -> str:
        only = {"property": "source_id", "value": source_id}
        hit = search(server, {"collection": COLLECTION, "text": "x", "filter": only}).json()
        (audio,) = [m for m in hit["results"][0]["media"] if m["field"] == "audio"]
        return audio["url"] if "url" in audio else audio["refused"]

    # The running server reads the new root within a few seconds.
    deadline = time.monotonic() + 30
    while not audio_of("clip").startswith("/api/") and time.monotonic() < deadline:
        time.sleep(1)
    clip = fetch(server, audio_of("clip"))
    assert (clip.status, clip.body) == (200, (manifest_dir / "sub/chirp.wav").read_bytes())
    far = audio_of("far")
    assert far.endswith(f"start ib-search with --media-root {os.path.realpath(elsewhere)}")


# -- requests ------------------------------------------------------------------------------------

BAD_NAMES = ["../../v1/objects", "Vault/../../v1/schema", "a b", "1Vault", "Vault;x", "V" * 256]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_a_bad_collection_name_is_400_before_weaviate_sees_it(server, name):
    answers = [
        fetch(server, f"/api/info?collection={quote(name, safe='')}"),
        search(server, {"collection": name, "text": "x"}),
    ]
    if "/" not in name:
        answers.append(fetch(server, f"/api/media/{quote(name, safe='')}/{NO_ID}/image"))
    for answer in answers:
        assert answer.status == 400, answer.body
        assert "is not a collection name" in answer.json()["error"]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"[" * 1000 + b"]" * 1000, "nests deeper than 8 levels"),
        (b'{"a":' * 1000 + b"1" + b"}" * 1000, "nests deeper than 8 levels"),
        (b"[" * 100_000, "nests deeper than 8 levels"),
        (
            b'{"collection":"Vault","text":"x","filter":' + b'{"v":' * 9 + b"1" + b"}" * 10,
            "nests deeper than 8 levels",
        ),
        (b'{"collection":"Vault","text":"x","limit":' + b"9" * 5000 + b"}", "not valid JSON"),
        (b"\xff\xfe\x00garbage", "not valid JSON"),
        (b'{"collection":"Vault","text":"x","limit":NaN}', "'limit' must be an integer"),
        (b'{"collection":["Vault"],"text":"x"}', "is not a collection name"),
        (b'{"collection":"Vault","near_id":{"a":1}}', "is not an object id"),
        (b'{"collection":"Vault","text":"x","filter":[]}', "'filter' must be an object"),
        (
            b'{"collection":"Vault","text":"x","filter":{"property":["source_id"],"value":"a"}}',
            "filter: 'property' must be a string",
        ),
        (
            b'{"collection":"Vault","text":"x","filter":{"property":"source_id","value":{}}}',
            "filter: 'value' must be text, a number or a boolean",
        ),
        (b'{"collection":"Vault","text":"x","filter":{"modality":7}}', "must be a string"),
        (b'{"collection":"Vault","text":["x"]}', "'text' must be a non-empty string"),
    ],
)
def test_nested_or_malformed_json_is_400_never_500(server, body, message):
    answer = fetch(server, "/api/search", method="POST", body=body)
    assert answer.status == 400, answer.body
    assert message in answer.json()["error"]


def test_every_kind_of_response_says_nosniff_and_runs_nothing(server, planted):
    answers = {
        "page": fetch(server, "/"),
        "script": fetch(server, "/static/app.js"),
        "missing file": fetch(server, "/static/nothing.js"),
        "api": fetch(server, "/api/collections"),
        "missing api": fetch(server, "/api/nowhere"),
        "bad request": fetch(server, "/api/info"),
        "refused": fetch(server, media_path(planted["etc-passwd"])),
        "not media": fetch(server, media_path(planted["blob-html"])),
        "thumbnail": fetch(server, media_path(planted["photo"], thumb=True)),
        "range": fetch(server, media_path(planted["photo"]), headers={"Range": "bytes=0-9"}),
    }
    assert [a.status for a in answers.values()] == [
        200,
        200,
        404,
        200,
        404,
        400,
        403,
        415,
        200,
        206,
    ]
    page_policy = answers.pop("page").headers["Content-Security-Policy"]
    assert "script-src 'self';" in page_policy and "default-src 'none'" in page_policy
    assert "unsafe-inline" not in page_policy and "unsafe-eval" not in page_policy
    for what, answer in answers.items():  # nosniff is checked by fetch itself
        assert "sandbox" in answer.headers["Content-Security-Policy"], what


def test_without_a_key_only_requests_for_this_machine_are_answered(server):
    port = urlsplit(server).port
    rebound = fetch(server, "/api/collections", headers={"Host": f"attacker.test:{port}"})
    assert rebound.status == 403
    assert "127.0.0.1 or localhost only" in rebound.json()["error"]
    assert fetch(server, "/", headers={"Host": f"attacker.test:{port}"}).status == 403
    assert fetch(server, "/api/collections", headers={"Host": f"localhost:{port}"}).status == 200


# -- the API key ---------------------------------------------------------------------------------


def test_listening_beyond_this_machine_needs_a_key(stack):
    done = run_search("--collection", COLLECTION, "--host", "0.0.0.0", *weaviate_flags(stack))
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1
    assert "--host 0.0.0.0 makes the page reachable from other machines" in done.stderr
    assert "--api-key" in done.stderr


def test_the_api_needs_the_key(keyed, planted):
    photo = media_path(planted["photo"])
    for path in ("/api/collections", photo):
        refused = fetch(keyed, path)
        assert refused.status == 401
        assert refused.headers["WWW-Authenticate"] == 'Bearer realm="ib-search"'
        assert "open the page once as /?key=KEY" in refused.json()["error"]
        wrong = fetch(keyed, path, headers={"Authorization": "Bearer not the key"})
        assert wrong.status == 401
    assert fetch(keyed, photo, headers={"Authorization": f"Bearer {API_KEY}"}).status == 200
    assert fetch(keyed, "/").status == 200  # the page itself holds no data
    assert fetch(keyed, "/static/app.js").status == 200


def test_visiting_with_the_key_once_sets_a_cookie_and_drops_the_key(keyed, planted):
    assert fetch(keyed, f"/?key={quote('not the key')}").status == 401
    answer = fetch(keyed, f"/?key={quote(API_KEY)}&collection={COLLECTION}&text=a+cat")
    assert answer.status == 303
    assert answer.headers["Location"] == f"/?collection={COLLECTION}&text=a+cat"
    cookie = answer.headers["Set-Cookie"]
    name, value = cookie.split(";")[0].split("=", 1)
    assert name == "ib_search_session" and value and API_KEY not in cookie
    attributes = {part.strip().lower() for part in cookie.split(";")[1:]}
    assert {"httponly", "samesite=strict", "path=/"} <= attributes
    with_cookie = {"Cookie": f"{name}={value}"}
    assert fetch(keyed, "/api/collections", headers=with_cookie).status == 200
    assert fetch(keyed, media_path(planted["photo"]), headers=with_cookie).status == 200
    forged = {"Cookie": f"{name}={'0' * len(value)}"}
    assert fetch(keyed, "/api/collections", headers=forged).status == 401


def test_the_page_works_in_a_browser_with_the_key_cookie(keyed):
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            context = browser.new_context()
            page = context.new_page()
            violations: list[str] = []
            page.on(
                "console",
                lambda m: (
                    violations.append(m.text) if "Content Security Policy" in m.text else None
                ),
            )
            query = f"collection={COLLECTION}&text=cat&property=source_id&value=image/cat.jpg"

            page.goto(f"{keyed}?{query}")  # no key yet: the page says how to give it
            expect(page.locator("#error")).to_contain_text("open the page once as /?key=KEY")

            page.goto(f"{keyed}?key={quote(API_KEY)}&{query}")
            assert "key=" not in page.url and f"collection={COLLECTION}" in page.url
            cat = page.locator('li.result[data-source-id="image/cat.jpg"] img')
            expect(cat).to_have_count(1, timeout=30_000)
            page.wait_for_function(
                "(img) => img.complete && img.naturalWidth > 0", arg=cat.element_handle()
            )
            (cookie,) = context.cookies()
            assert (cookie["httpOnly"], cookie["sameSite"]) == (True, "Strict")
            assert page.evaluate("document.cookie") == ""  # HttpOnly: no script reads it

            # A planted object shows why its medium is not shown, as text, not as markup.
            page.goto(
                f"{keyed}?collection={COLLECTION}&text=x&property=source_id&value=planted/html"
            )
            refused = page.locator("li.result .refused")
            expect(refused).to_contain_text("not media the page shows", timeout=30_000)
            assert violations == []
            context.close()
        finally:
            browser.close()
