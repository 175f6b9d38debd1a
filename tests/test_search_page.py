"""ib-search: the page in a real headless browser (Debian's chromium), and the JSON API behind it.

One collection of every modality is ingested from the fixture files with the
tiny model; ``ib-search`` runs as its own process (``python -m pipelines.search``)
against the module's stack. Each browser test finds the object it expects among
the results by its ``data-source-id``; screenshots go to ``tests/screenshots/``.
The page runs under its own Content-Security-Policy, and the tests check that it
refuses nothing the page needs; what ib-search must refuse is tested in
``test_search_security.py``. A third collection, from a manifest, holds one text
with metadata in words and a hash, for how a card shows its properties.
"""

from __future__ import annotations

import base64
import json
import os
import queue
import re
import socket
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import quote

import pytest
from playwright.sync_api import Page, expect

from .conftest import SCREENSHOTS
from .fixture_data import INPUTS
from .test_ingest import copy_dataset, run_ingest

ROOT = Path(__file__).resolve().parents[1]
COLLECTION = "Gallery"
URI_COLLECTION = "GalleryUris"
TEXT = "a dog barking loudly"  # text/note.txt of the dataset
NOTES = "Notes"
NOTE = {
    "id": "notes/harbour.txt",
    "text": "boats in the harbour at dawn",
    "caption": "Fishing boats coming back into the harbour at dawn, photographed from the "
    "lighthouse pier while the gulls followed them",
    "sha256": "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
}


class SearchServer:
    """``python -m pipelines.search ...`` in a child process, its URL read from its first line."""

    def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
        env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "pipelines.search", "--port", "0", *args],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        lines: queue.Queue[str] = queue.Queue()
        threading.Thread(
            target=lambda: lines.put(self.process.stdout.readline()), daemon=True
        ).start()
        try:
            first = lines.get(timeout=60)
        except queue.Empty:
            first = ""
        match = re.fullmatch(r"search page: (http://127\.0\.0\.1:\d+/)\n", first)
        if match is None:
            self.stop()
            raise AssertionError(f"ib-search did not start: {first!r} {self.process.stderr.read()}")
        self.url = match.group(1)

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return copy_dataset(tmp_path_factory.mktemp("dataset"))


@pytest.fixture(scope="module")
def gallery(stack, dataset, tmp_path_factory):
    """Every modality ingested twice: media as BLOBs, and with --store-uri."""
    dead = tmp_path_factory.mktemp("dead")
    assert run_ingest(stack, dataset, COLLECTION, dead / "blobs.jsonl") == 0
    assert run_ingest(stack, dataset, URI_COLLECTION, dead / "uris.jsonl", "--store-uri") == 0
    return dataset


@pytest.fixture(scope="module")
def notes(stack, tmp_path_factory) -> None:
    """NOTES: NOTE's text, and its caption and hash as metadata, ingested from a manifest."""
    folder = tmp_path_factory.mktemp("notes")
    manifest = folder / "notes.jsonl"
    manifest.write_text(json.dumps(NOTE) + "\n")
    assert run_ingest(stack, manifest, NOTES, folder / "failures.jsonl") == 0


@pytest.fixture(scope="module")
def server(stack, gallery):
    e = stack.endpoints
    running = SearchServer(
        "--collection",
        COLLECTION,
        "--weaviate-url",
        e.weaviate_http,
        "--grpc-port",
        str(e.weaviate_grpc_port),
    )
    yield running.url
    running.stop()


@pytest.fixture
def csp_violations(page) -> list[str]:
    """What the page's Content-Security-Policy refused, as the browser's console reports it."""
    refused: list[str] = []
    page.on(
        "console",
        lambda m: refused.append(m.text) if "Content Security Policy" in m.text else None,
    )
    return refused


def results(page: Page):
    return page.locator("#results > li.result")


def first_source_id(page: Page) -> str:
    first = results(page).first
    expect(first).to_be_visible(timeout=30_000)
    return first.get_attribute("data-source-id")


def drop_file(page: Page, path: Path, mime: str) -> None:
    """A real drop: a DataTransfer holding the file, dispatched as dragover and drop."""
    page.evaluate(
        """([name, mime, b64]) => {
            const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
            const transfer = new DataTransfer();
            transfer.items.add(new File([bytes], name, { type: mime }));
            const zone = document.getElementById("drop-zone");
            for (const type of ["dragenter", "dragover", "drop"]) {
                zone.dispatchEvent(new DragEvent(type, { dataTransfer: transfer, bubbles: true,
                                                         cancelable: true }));
            }
        }""",
        [path.name, mime, base64.b64encode(path.read_bytes()).decode()],
    )


def press_tab_until(page: Page, selector: str, limit: int = 80) -> None:
    for _ in range(limit):
        page.keyboard.press("Tab")
        if page.evaluate("(s) => document.activeElement.matches(s)", selector):
            return
    raise AssertionError(f"Tab never reached {selector}")


# -- in the browser ------------------------------------------------------------------------------


def test_text_query_and_more_like_this_by_keyboard_only(server, page):
    page.goto(server)
    expect(page.locator("#collection")).to_have_value(COLLECTION)
    page.locator("body").focus()
    press_tab_until(page, "#query")
    page.keyboard.type(TEXT)
    page.keyboard.press("Enter")
    assert first_source_id(page) == "text/note.txt"
    expect(results(page).first.locator("p.text")).to_have_text(TEXT)
    assert results(page).first.inner_text().count(TEXT) == 1  # not again as a property
    assert "text=a+dog+barking+loudly" in page.url  # the query is a link to share

    # The first result's "more like this", reached with Tab, finds that object first.
    press_tab_until(page, "li.result:first-child .more-like-this")
    page.keyboard.press("Enter")
    expect(page.locator("#status")).to_have_text("Results 1–10 for more like text/note.txt")
    assert first_source_id(page) == "text/note.txt"
    assert "near_id=" in page.url


def test_every_modality_is_shown_in_the_grid(server, page, csp_violations):
    page.goto(f"{server}?collection={COLLECTION}&text={quote(TEXT)}")
    expect(results(page)).to_have_count(10, timeout=30_000)
    grid = page.locator("#results")
    expect(grid.locator("figure.image img")).to_have_count(2)
    expect(grid.locator("figure.depth img")).to_have_count(1)
    expect(grid.locator("figure.thermal img")).to_have_count(1)
    expect(grid.locator("figure.audio audio")).to_have_count(2)
    expect(grid.locator("figure.video video")).to_have_count(1)
    expect(grid.locator("figure.imu canvas")).to_have_count(2)
    # Every thumbnail loaded: the stored bytes were served and decoded by the browser.
    page.wait_for_function(
        """() => [...document.querySelectorAll('#results img')]
                 .every((img) => img.complete && img.naturalWidth > 0)""",
        timeout=30_000,
    )
    # The IMU plots drew their channels (some pixel is not blank).
    page.wait_for_function(
        """() => [...document.querySelectorAll('#results canvas')].every((canvas) =>
                 canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height)
                   .data.some((value) => value !== 0))""",
        timeout=30_000,
    )
    for item in results(page).all():
        assert re.fullmatch(r"[0-9a-f-]{36}", item.get_attribute("data-id"))
        assert item.get_attribute("data-source-id")
    expect(results(page).first.locator(".distance")).to_have_text("distance 0.0000")
    assert csp_violations == []  # the page's own policy lets all of it load
    SCREENSHOTS.mkdir(exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "results-grid.png"))


def test_a_chosen_image_file_finds_that_image(server, page, gallery):
    page.goto(server)
    page.set_input_files("#file", str(gallery / "photos/logo.png"))
    assert first_source_id(page) == "photos/logo.png"
    expect(page.locator("#status")).to_contain_text("logo.png (detected)")


def test_a_dropped_image_finds_that_image(server, page, gallery):
    page.goto(server)
    expect(page.locator("#collection")).to_have_value(COLLECTION)
    drop_file(page, gallery / "image/cat.jpg", "image/jpeg")
    assert first_source_id(page) == "image/cat.jpg"
    image = results(page).first.locator("img")
    expect(image).to_have_attribute("alt", "image of image/cat.jpg")


def test_a_dropped_audio_file_finds_that_recording_and_plays_it(server, page, gallery):
    page.goto(server)
    expect(page.locator("#collection")).to_have_value(COLLECTION)
    drop_file(page, gallery / "audio/tone.wav", "audio/wav")
    assert first_source_id(page) == "audio/tone.wav"
    player = results(page).first.locator("audio")
    expect(player).to_have_count(1)
    # The player read the stored WAV's header: a real duration.
    duration = player.evaluate(
        """(audio) => new Promise((resolve) => {
            if (audio.readyState >= 1) resolve(audio.duration);
            audio.addEventListener('loadedmetadata', () => resolve(audio.duration));
            audio.addEventListener('error', () => resolve(-1));
            audio.load();
        })"""
    )
    assert duration > 0


def test_more_like_this_on_an_image_result(server, page, gallery):
    page.goto(f"{server}?collection={COLLECTION}&text={quote('a photo of a cat')}")
    cat = page.locator('li.result[data-source-id="image/cat.jpg"]')
    expect(cat).to_have_count(1, timeout=30_000)
    cat.locator(".more-like-this").click()
    expect(page.locator("#status")).to_have_text("Results 1–10 for more like image/cat.jpg")
    assert first_source_id(page) == "image/cat.jpg"
    expect(results(page).first.locator(".distance")).to_have_text("distance 0.0000")


def test_a_deep_link_shows_its_results(server, page):
    page.goto(f"{server}?collection={COLLECTION}&text={quote(TEXT)}")
    assert first_source_id(page) == "text/note.txt"
    expect(page.locator("#query")).to_have_value(TEXT)
    expect(page.locator("#error")).to_be_hidden()


def test_a_deep_link_to_another_collection_with_stored_uris(server, page, csp_violations):
    page.goto(f"{server}?collection={URI_COLLECTION}&text={quote(TEXT)}&modality=audio")
    expect(results(page)).to_have_count(2, timeout=30_000)
    expect(page.locator("#results audio")).to_have_count(2)
    expect(page.locator("#results .refused")).to_have_count(0)  # inside the recorded root
    assert csp_violations == []
    assert {item.get_attribute("data-source-id") for item in results(page).all()} == {
        "audio/tone.wav",
        "sounds/chirp.wav",
    }
    expect(page.locator("#collection")).to_have_value(URI_COLLECTION)


def test_an_unsupported_file_says_so_on_the_page(server, page, tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("just some words, not a recording\nnor an image\n")
    page.goto(server)
    page.set_input_files("#file", str(notes))
    error = page.locator("#error")
    expect(error).to_be_visible(timeout=30_000)
    expect(error).to_contain_text("unsupported file notes.txt")
    expect(page.locator("#status")).to_have_text("Could not search for notes.txt (detected)")
    expect(results(page)).to_have_count(0)
    expect(page.locator("#pager")).to_be_hidden()


def test_an_unreachable_weaviate_says_so_on_the_page(browser):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        dead = probe.getsockname()[1]
    running = SearchServer(
        "--collection", "Anything", "--weaviate-url", f"http://127.0.0.1:{dead}", "--grpc-port", "1"
    )
    try:
        context = browser.new_context()
        page = context.new_page()
        page.goto(f"{running.url}?collection=Anything&text=rain")
        error = page.locator("#error")
        expect(error).to_be_visible(timeout=30_000)
        expect(error).to_contain_text(f"cannot reach Weaviate at http://127.0.0.1:{dead}")
        expect(page.locator("#query")).to_have_value("rain")  # the link's query, to search again
        context.close()
        status, body = call(running.url + "api/search", {"collection": "Anything", "text": "x"})
        assert status == 503
        assert "cannot reach Weaviate" in body["error"]
    finally:
        running.stop()


def test_a_failed_search_leaves_its_query_and_options_as_they_were(server, page):
    """A filter on a property the collection lacks: the error, and every control as given."""
    link = f"{server}?collection={COLLECTION}&text={quote(TEXT)}&alpha=0.3"
    page.goto(f"{link}&modality=audio&property=nope&value=1")
    expect(page.locator("#error")).to_contain_text("no property 'nope' to filter on")
    failed = f"Could not search for “{TEXT}” (hybrid, alpha 0.3)"
    expect(page.locator("#status")).to_have_text(failed)
    expect(page.locator("#query")).to_have_value(TEXT)
    expect(page.locator("#hybrid")).to_be_checked()
    expect(page.locator("#alpha")).to_have_value("0.3")
    expect(page.locator("#filter-modality")).to_have_value("audio")
    expect(page.locator("#filter-property")).to_have_value("nope")
    expect(page.locator("#filter-value")).to_have_value("1")
    # Fixed on the page, the same query finds the audio.
    page.select_option("#filter-property", "")
    page.click("#filter-form button[type=submit]")
    expect(results(page)).to_have_count(2, timeout=30_000)
    expect(page.locator("#error")).to_be_hidden()


def test_previous_and_next_only_where_there_is_such_a_page(server, page):
    pager, status = page.locator("#pager"), page.locator("#status")
    previous, following = page.locator("#previous"), page.locator("#next")
    link = f"{server}?collection={COLLECTION}&text={quote(TEXT)}"
    page.goto(server)
    expect(page.locator("#collection")).to_have_value(COLLECTION)
    expect(pager).to_be_hidden()  # nothing searched yet
    expect(previous).to_be_disabled()
    expect(following).to_be_disabled()

    page.goto(f"{link}&property=source_id&value=none/*")
    expect(status).to_have_text(f"No results for “{TEXT}”", timeout=30_000)
    expect(pager).to_be_hidden()
    expect(previous).to_be_disabled()
    expect(following).to_be_disabled()

    # The gallery's ten objects from the 7th on: the last page. Next is greyed out and inert.
    page.goto(f"{link}&offset=6")
    expect(status).to_have_text(f"Results 7–10 for “{TEXT}”", timeout=30_000)
    expect(pager).to_be_visible()
    expect(page.locator("#page-number")).to_have_text("page 2")
    expect(previous).to_be_enabled()
    expect(following).to_be_disabled()
    look = "(b) => ['backgroundColor', 'color', 'cursor'].map((key) => getComputedStyle(b)[key])"
    assert following.evaluate(look) != previous.evaluate(look)
    assert following.evaluate(look)[2] == "not-allowed"
    shown = page.url
    following.click(force=True)
    expect(status).to_have_text(f"Results 7–10 for “{TEXT}”")
    assert page.url == shown
    previous.click()
    expect(status).to_have_text(f"Results 1–10 for “{TEXT}”", timeout=30_000)
    expect(pager).to_be_hidden()  # one page holds all ten


# For the one text node of an element: how many lines it takes, and which words are split
# across two.
LINES_AND_SPLIT_WORDS = """(element) => {
    const text = element.firstChild;
    const range = document.createRange();
    const lines = (start, end) => {
        range.setStart(text, start);
        range.setEnd(text, end);
        return new Set([...range.getClientRects()].map((r) => Math.round(r.top))).size;
    };
    const split = [...text.data.matchAll(/\\S+/g)]
        .filter((word) => lines(word.index, word.index + word[0].length) > 1)
        .map((word) => word[0]);
    return { lines: lines(0, text.data.length), split };
}"""


def test_a_text_hit_shows_its_text_once_and_its_properties_wrap_between_words(server, notes, page):
    page.goto(f"{server}?collection={NOTES}&text=boats")
    card = page.locator(f'li.result[data-source-id="{NOTE["id"]}"]')
    expect(card).to_be_visible(timeout=30_000)
    expect(card.locator("p.text")).to_have_text(NOTE["text"])
    assert card.inner_text().count(NOTE["text"]) == 1
    expect(card.locator("dt")).to_have_text(["modality", "source_id", "caption", "sha256"])

    caption = card.locator("xpath=.//dt[.='caption']/following-sibling::dd[1]")
    wrapped = caption.evaluate(LINES_AND_SPLIT_WORDS)
    assert wrapped["lines"] > 1 and wrapped["split"] == [], wrapped
    # A token wider than the card (a hash) breaks where it must, inside the card.
    digest = card.locator("xpath=.//dt[.='sha256']/following-sibling::dd[1]")
    assert digest.evaluate(LINES_AND_SPLIT_WORDS)["lines"] > 1
    assert digest.evaluate("(dd) => dd.scrollWidth <= dd.clientWidth")


# -- the JSON API --------------------------------------------------------------------------------


def call(url: str, body: dict | bytes | None = None) -> tuple[int, dict]:
    data = body if isinstance(body, bytes | type(None)) else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method="POST" if data is not None else "GET")
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ({"collection": "Missing", "text": "x"}, 404, "collection 'Missing' does not exist"),
        ({"collection": "../../v1/objects", "text": "x"}, 400, "is not a collection name"),
        ({"collection": COLLECTION}, 400, "give exactly one query"),
        ({"text": "x"}, 400, "'collection' is missing"),
        ({"collection": COLLECTION, "text": "x", "near_id": "y"}, 400, "got text, near_id"),
        ({"collection": COLLECTION, "near_id": "not-a-uuid"}, 400, "is not an object id"),
        ({"collection": COLLECTION, "media": "***"}, 400, "not valid base64"),
        (
            {
                "collection": COLLECTION,
                "media": base64.b64encode(b"plain words").decode(),
                "filename": "a.txt",
            },
            415,
            "unsupported file a.txt",
        ),
        ({"collection": COLLECTION, "text": "x", "limit": 0}, 400, "'limit' must be an integer"),
        (
            {"collection": COLLECTION, "text": "x", "filter": {"modality": "smell"}},
            400,
            "unknown modality 'smell'",
        ),
        (
            {"collection": COLLECTION, "text": "x", "filter": {"property": "nope", "value": "1"}},
            400,
            "no property 'nope'",
        ),
        (b"{not json", 400, "not valid JSON"),
        (
            {
                "collection": COLLECTION,
                "media": base64.b64encode((INPUTS / "image_rgb.jpg").read_bytes()[:400]).decode(),
                "filename": "cut.jpg",
            },
            400,
            "cut.jpg: Weaviate's vectorizer could not use it as image",
        ),
    ],
)
def test_bad_requests_answer_4xx_with_an_error(server, body, status, message):
    answer_status, answer = call(server + "api/search", body)
    assert answer_status == status
    assert message in answer["error"]


def test_api_errors_elsewhere_are_json_too(server):
    assert call(server + "api/info")[0] == 400
    status, answer = call(server + "api/info?collection=Missing")
    assert (status, answer["error"]) == (404, "collection 'Missing' does not exist")
    status, answer = call(
        server + f"api/media/{COLLECTION}/00000000-0000-0000-0000-000000000000/sound"
    )
    assert (status, answer["error"]) == (404, "'sound' is not a media field of this collection")
    status, answer = call(server + "api/nowhere")
    assert (status, answer["error"]) == (404, "no API at /api/nowhere")


def test_search_pages_and_filters(server):
    query = {"collection": COLLECTION, "text": TEXT, "limit": 4}
    pages = [call(server + "api/search", {**query, "offset": offset})[1] for offset in (0, 4, 8)]
    assert [len(p["results"]) for p in pages] == [4, 4, 2]
    assert [p["more"] for p in pages] == [True, True, False]
    ids = [hit["source_id"] for p in pages for hit in p["results"]]
    assert len(set(ids)) == 10
    _, audio = call(server + "api/search", {**query, "filter": {"modality": "audio"}})
    assert {hit["source_id"] for hit in audio["results"]} == {"audio/tone.wav", "sounds/chirp.wav"}
    assert all(hit["media"][0]["content_type"] == "audio/wav" for hit in audio["results"])
    by_path = {"property": "source_id", "value": "imu/*"}
    _, imu = call(server + "api/search", {**query, "filter": by_path})
    assert [hit["source_id"] for hit in imu["results"]] == ["imu/walk.csv"]


def media_of(server: str, collection: str, source_id: str) -> list[dict]:
    """The media entries of the object ``source_id``, found through the search API."""
    only = {"property": "source_id", "value": source_id}
    _, found = call(server + "api/search", {"collection": collection, "text": "x", "filter": only})
    return found["results"][0]["media"]


def test_media_come_from_the_blob_or_the_stored_uri(server, gallery):
    (video,) = media_of(server, URI_COLLECTION, "video/a.mp4")
    assert video["uri"] == str(gallery / "video/a.mp4")
    assert video["content_type"] == "video/mp4"  # sniffed from the file's bytes
    request = urllib.request.Request(
        server.rstrip("/") + video["url"], headers={"Range": "bytes=0-99"}
    )
    with urllib.request.urlopen(request) as response:
        assert response.status == 206  # players can seek
        assert response.headers["Content-Type"] == "video/mp4"
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert response.read() == (gallery / "video/a.mp4").read_bytes()[:100]

    (image,) = media_of(server, COLLECTION, "image/cat.jpg")
    with urllib.request.urlopen(server.rstrip("/") + image["url"]) as response:
        assert response.headers["Content-Type"] == "image/jpeg"
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert response.read() == (gallery / "image/cat.jpg").read_bytes()


def test_the_page_needs_nothing_from_elsewhere(server):
    with urllib.request.urlopen(server) as response:
        html = response.read().decode()
    assets = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert assets == ["/static/style.css", "/static/app.js"]
    for text in [html] + [
        urllib.request.urlopen(server + a.lstrip("/")).read().decode() for a in assets
    ]:
        assert "http://" not in text and "https://" not in text and "//cdn" not in text
        assert "@import" not in text and "@font-face" not in text
