"""ib-search's composed queries, hybrid search and tenants, against the real stack.

A collection of every modality is ingested by the real ib-ingest with the tiny
model, and a multi-tenant one whose two tenants hold different files; each
``ib-search`` runs as its own process. A composed query asked of the page's API
must rank exactly as Weaviate's near_vector of the normalised weighted sum that
the test computes with numpy from the inference server's own vectors; in
headless Chromium the page builds the same queries from its controls and keeps
them in its link. The screenshot of a composed query is
``tests/screenshots/search-composed.png`` (copied to ``docs/``).
"""

from __future__ import annotations

import base64
import shutil
import urllib.error
import urllib.request
from contextlib import ExitStack
from pathlib import Path
from urllib.parse import parse_qs, urlencode, urlsplit

import numpy as np
import pytest
from playwright.sync_api import Page, expect
from weaviate.classes.query import MetadataQuery
from weaviate.util import generate_uuid5

from ib_vectorizer.modalities import Modality
from pipelines.search.server import main as ib_search

from .conftest import SCREENSHOTS
from .test_ingest import copy_dataset, run_ingest, server_vector
from .test_search_page import SearchServer, call, drop_file

COLLECTION = "Mixed"
TEAMS = "Teams"  # multi-tenant
TENANT_FILES = {
    "red": ("image/cat.jpg", "audio/tone.wav", "text/note.txt"),
    "blue": ("photos/logo.png", "sounds/chirp.wav"),
}
LIMIT = 8
PAGE_SIZE = 12  # the page's
NIGHT = "at night, in the rain"


def weaviate_flags(stack) -> list[str]:
    e = stack.endpoints
    return ["--weaviate-url", e.weaviate_http, "--grpc-port", str(e.weaviate_grpc_port)]


@pytest.fixture(scope="module")
def tree(stack, tmp_path_factory) -> Path:
    """Every modality, ingested into COLLECTION."""
    root = tmp_path_factory.mktemp("composed")
    tree = copy_dataset(root / "tree")
    assert run_ingest(stack, tree, COLLECTION, root / "failures.jsonl") == 0
    return tree


@pytest.fixture(scope="module")
def tenants(stack, tree, tmp_path_factory) -> None:
    """TEAMS with tenant red and tenant blue, holding different files (so different ids)."""
    root = tmp_path_factory.mktemp("tenants")
    for tenant, files in TENANT_FILES.items():
        for relative in files:
            (root / tenant / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(tree / relative, root / tenant / relative)
        failures = root / f"{tenant}.jsonl"
        assert run_ingest(stack, root / tenant, TEAMS, failures, "--tenant", tenant) == 0


@pytest.fixture(scope="module")
def server(stack, tree):
    running = SearchServer(
        "--collection", COLLECTION, *weaviate_flags(stack),
        "--vectorizer-url", stack.endpoints.vectorizer,
    )  # fmt: skip
    yield running.url
    running.stop()


def search(url: str, **body) -> dict:
    """The page's search API, which must answer 200."""
    status, answer = call(url + "api/search", {"collection": COLLECTION, **body})
    assert status == 200, answer
    return answer


def ids(answer: dict) -> list[str]:
    return [hit["id"] for hit in answer["results"]]


def as_item(path: Path, weight: float) -> dict:
    return {"media": base64.b64encode(path.read_bytes()).decode(), "filename": path.name,
            "weight": weight}  # fmt: skip


def shown_ids(page: Page, count: int) -> list[str]:
    results = page.locator("#results > li.result")
    expect(results).to_have_count(count, timeout=30_000)
    return [item.get_attribute("data-id") for item in results.all()]


def link_query(url: str) -> dict[str, list[str]]:
    return parse_qs(urlsplit(url).query)


# -- the API -------------------------------------------------------------------------------------


def test_a_composed_query_ranks_as_near_vector_of_the_normalised_weighted_sum(
    stack, client, server, tree
):
    """Image, audio and a subtracted text: one near_vector search of the unit vectors' sum."""
    image, audio = tree / "image/cat.jpg", tree / "audio/tone.wav"
    items = [as_item(image, 1), as_item(audio, 0.5), {"text": NIGHT, "weight": -0.3}]
    answer = search(server, items=items, limit=LIMIT)

    vectors = [
        server_vector(stack, Modality.VISION, image.read_bytes()),
        server_vector(stack, Modality.AUDIO, audio.read_bytes()),
        server_vector(stack, Modality.TEXT, NIGHT),
    ]
    units = [v / np.linalg.norm(v) for v in vectors]
    total = 1.0 * units[0] + 0.5 * units[1] - 0.3 * units[2]
    expected = client.collections.get(COLLECTION).query.near_vector(
        near_vector=(total / np.linalg.norm(total)).tolist(),
        target_vector="imagebind",
        limit=LIMIT,
        return_metadata=MetadataQuery(distance=True),
    )
    assert ids(answer) == [str(o.uuid) for o in expected.objects]
    assert len(answer["results"]) == LIMIT
    np.testing.assert_allclose(
        [hit["distance"] for hit in answer["results"]],
        [o.metadata.distance for o in expected.objects],
        atol=1e-5,
    )
    assert (answer["query"], answer["weights"]) == ("composed", [1.0, 0.5, -0.3])
    # The weights count: the same items with the text added instead of subtracted are further
    # from every hit that the subtraction brought near.
    flipped = search(server, items=[*items[:2], {"text": NIGHT, "weight": 0.3}], limit=LIMIT)
    assert [h["distance"] for h in flipped["results"]] != [h["distance"] for h in answer["results"]]


def test_composed_pages_follow_one_another(server, tree):
    """Paging a composed query: pages of 3 add up to the first 9 hits of one page of 9."""
    items = [{"text": "a dog barking loudly"}, as_item(tree / "sounds/chirp.wav", -0.5)]
    whole = ids(search(server, items=items, limit=9))
    pages = [ids(search(server, items=items, limit=3, offset=o)) for o in (0, 3, 6)]
    assert [i for p in pages for i in p] == whole and len(set(whole)) == 9


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ({"items": [{"text": "a"}] * 4}, 400, "'items' must be a list of 1 to 3"),
        ({"items": [{"text": "a", "media": "AAAA"}]}, 400, "query item 1: give 'text' or"),
        (
            {"items": [{"text": "a"}, {"text": "b", "weight": "heavy"}]},
            400,
            "query item 2: 'weight'",
        ),
        ({"items": [{"text": "rain"}, {"text": "rain", "weight": -1}]}, 400, "cancel out"),
        ({"items": [{"near_id": str(generate_uuid5("x"))}]}, 400, "query item 1: give 'text'"),
        (
            {
                "items": [
                    {"text": "a"},
                    {"media": base64.b64encode(b"words").decode(), "filename": "notes.txt"},
                ]
            },
            415,
            "query item 2: unsupported file notes.txt",
        ),
        ({"items": [{"text": "a"}], "text": "b"}, 400, "got text, items"),
        ({"items": [{"text": "a"}, {"text": "b"}], "alpha": 0.5}, 400, "'alpha' (a hybrid"),
        ({"text": "a", "alpha": 1.5}, 400, "'alpha' must be a number from 0"),
        ({"text": "a", "alpha": True}, 400, "'alpha' must be a number from 0"),
    ],
)
def test_bad_composed_and_hybrid_requests_say_what_is_wrong(server, body, status, message):
    answer_status, answer = call(server + "api/search", {"collection": COLLECTION, **body})
    assert (answer_status, message in answer["error"]) == (status, True), answer


def test_hybrid_search_passes_alpha_through(server, client):
    """alpha 0 is BM25 alone (only the note holds the words), 1 the vector search, and any
    alpha ranks as Weaviate's own hybrid search with it."""
    keywords = search(server, text="dog barking", alpha=0, limit=LIMIT)
    assert ids(keywords) == [str(generate_uuid5("text/note.txt"))]
    assert (keywords["query"], keywords["alpha"]) == ("hybrid", 0)
    assert keywords["results"][0]["score"] > 0 and keywords["results"][0]["distance"] is None

    vector = search(server, text="dog barking", alpha=1, limit=LIMIT)
    mixed = client.collections.get(COLLECTION)
    by_vector = mixed.query.near_text(query="dog barking", target_vector="imagebind", limit=LIMIT)
    assert ids(vector) == [str(o.uuid) for o in by_vector.objects]
    assert len(ids(vector)) == LIMIT

    halfway = search(server, text="dog barking", alpha=0.5, limit=LIMIT)
    by_weaviate = mixed.query.hybrid(
        query="dog barking", alpha=0.5, target_vector="imagebind", limit=LIMIT
    )
    assert ids(halfway) == [str(o.uuid) for o in by_weaviate.objects]


def test_tenants_are_kept_apart(stack, tenants, tree, page):
    """``--tenant`` sends every search and media read to that tenant: objects of red are
    neither found nor served by an ib-search of blue, and the page says which tenant it shows."""
    with ExitStack() as running:
        urls = {}
        for tenant in TENANT_FILES:
            server = SearchServer("--collection", TEAMS, *weaviate_flags(stack), "--tenant", tenant)
            running.callback(server.stop)
            urls[tenant] = server.url
        found = {}
        for tenant, url in urls.items():
            status, answer = call(url + "api/search", {"collection": TEAMS, "text": "a cat"})
            assert status == 200, answer
            found[tenant] = {hit["source_id"]: hit for hit in answer["results"]}
            assert set(found[tenant]) == set(TENANT_FILES[tenant])
        (picture,) = [m for m in found["red"]["image/cat.jpg"]["media"] if m["modality"] == "image"]
        red, blue = urls["red"].rstrip("/"), urls["blue"].rstrip("/")
        assert fetch(red + picture["url"]) == (200, (tree / "image/cat.jpg").read_bytes())
        status, answer = fetch(blue + picture["url"])
        assert status == 404 and b"has no 'image' media" in answer  # red's object is not in blue

        page.goto(f"{urls['blue']}?collection={TEAMS}&text=a+cat")
        expect(page.locator("#tenant")).to_have_text("tenant blue")
        shown = page.locator("#results > li.result")
        expect(shown).to_have_count(2, timeout=30_000)
        assert {item.get_attribute("data-source-id") for item in shown.all()} == set(
            TENANT_FILES["blue"]
        )
        # Without --vectorizer-url (nor a local stack) composing is off, and the page says why.
        expect(page.locator("#add-item")).to_be_disabled()
        expect(page.locator("#compose-note")).to_contain_text("without --vectorizer-url")
        status, answer = call(
            urls["blue"] + "api/search",
            {"collection": TEAMS, "items": [{"text": "a"}, {"text": "b"}]},
        )
        assert status == 400 and "--vectorizer-url" in answer["error"]


def fetch(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=60) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def test_a_wrong_tenant_stops_ib_search_at_start(stack, tenants, tree, capsys):
    assert ib_search(["--collection", TEAMS, *weaviate_flags(stack), "--tenant", "green"]) == 1
    assert "collection Teams has no tenant 'green'" in capsys.readouterr().err
    assert ib_search(["--collection", COLLECTION, *weaviate_flags(stack), "--tenant", "red"]) == 1
    assert "collection Mixed is not multi-tenant" in capsys.readouterr().err


# -- the page ------------------------------------------------------------------------------------


def compose_on_page(page: Page, first: str, *rows: tuple[str | Path, float], weight: float = 1):
    """Item 1 typed in the search box, each further item added as a row: text or a file."""
    page.fill("#query", first)
    for number, (value, row_weight) in enumerate(rows, start=2):
        page.click("#add-item")
        if isinstance(value, Path):
            page.set_input_files(f"#item-{number}-file", str(value))
        else:
            page.fill(f"#item-{number}-text", value)
        page.fill(f"#item-{number}-weight", str(row_weight))
    page.fill("#weight", str(weight))


def test_the_page_composes_text_items_and_its_link_repeats_the_query(server, page):
    page.goto(server)
    expect(page.locator("#collection")).to_have_value(COLLECTION)
    expect(page.locator("#weight")).to_be_hidden()  # one item: the page as it always was
    compose_on_page(page, "a dog barking loudly", ("a photo of a cat", 0.5), ("rain", -0.3))
    expect(page.locator("#add-item")).to_be_disabled()  # three items at most
    page.click("#search-button")
    expect(page.locator("#status")).to_have_text(
        "Results 1–10 for “a dog barking loudly” + 0.5 × “a photo of a cat” − 0.3 × “rain”",
        timeout=30_000,
    )
    shown = shown_ids(page, 10)
    items = [{"text": "a dog barking loudly", "weight": 1}, {"text": "a photo of a cat",
             "weight": 0.5}, {"text": "rain", "weight": -0.3}]  # fmt: skip
    assert shown == ids(search(server, items=items, limit=PAGE_SIZE))
    link = link_query(page.url)
    assert link["text"] == ["a dog barking loudly", "a photo of a cat", "rain"]
    assert link["weight"] == ["1", "0.5", "-0.3"]

    page.reload()  # the link alone repeats it: the controls and the results
    assert shown_ids(page, 10) == shown
    expect(page.locator("#query")).to_have_value("a dog barking loudly")
    expect(page.locator("#item-2-text")).to_have_value("a photo of a cat")
    expect(page.locator("#item-3-weight")).to_have_value("-0.3")

    page.click("li.item:first-child .remove-item")  # item 2 goes, "rain" becomes item 2
    expect(page.locator("#item-2-text")).to_have_value("rain")
    expect(page.locator("#add-item")).to_be_enabled()


def test_a_composed_link_opened_fresh_and_the_single_links_still_work(server, page):
    link = {"collection": COLLECTION, "text": ["a photo of a cat", "a dog barking loudly"],
            "weight": ["2", "-1"]}  # fmt: skip
    page.goto(f"{server}?{urlencode(link, doseq=True)}")
    items = [{"text": "a photo of a cat", "weight": 2}, {"text": "a dog barking loudly",
             "weight": -1}]  # fmt: skip
    assert shown_ids(page, 10) == ids(search(server, items=items, limit=PAGE_SIZE))
    expect(page.locator("#weight")).to_have_value("2")
    expect(page.locator("#item-2-weight")).to_have_value("-1")
    expect(page.locator("#status")).to_have_text(
        "Results 1–10 for 2 × “a photo of a cat” − “a dog barking loudly”"
    )
    page.click("#search-button")  # searched again from the controls: the same link
    expect(page.locator("#status")).to_contain_text("2 × “a photo of a cat”")
    assert link_query(page.url) == link_query(f"/?{urlencode(link, doseq=True)}")

    page.goto(f"{server}?collection={COLLECTION}&text=a+photo+of+a+cat")  # one item, as before
    assert shown_ids(page, 10) == ids(search(server, text="a photo of a cat", limit=PAGE_SIZE))
    expect(page.locator("#items > li")).to_have_count(0)
    expect(page.locator("#weight")).to_be_hidden()

    page.goto(f"{server}?collection={COLLECTION}&text=a&text=b&weight=1")
    expect(page.locator("#error")).to_have_text(
        "the link has 2 text items and 1 weights: give one weight each"
    )
    # The link's items stay in the controls, for its weights to be fixed there.
    expect(page.locator("#query")).to_have_value("a")
    expect(page.locator("#weight")).to_have_value("1")
    expect(page.locator("#item-2-text")).to_have_value("b")


# Each short label on view ("It is", "weight", ...; not those only screen readers read): its
# text's line count, and whether it shares a line with its control.
SHORT_LABELS = """() => [...document.querySelectorAll('label:not(.hidden)')]
    .filter((label) => label.offsetParent && label.control && label.textContent.length <= 12)
    .map((label) => {
        const text = document.createRange();
        text.selectNodeContents(label);
        const own = label.getBoundingClientRect();
        const control = label.control.getBoundingClientRect();
        return {
            label: label.textContent,
            lines: new Set([...text.getClientRects()].map((r) => Math.round(r.top))).size,
            besideControl: own.top < control.bottom && control.top < own.bottom,
        };
    })"""


def test_short_labels_stay_on_one_line_beside_their_controls(server, page):
    page.goto(server)
    expect(page.locator("#collection")).to_have_value(COLLECTION)
    page.click("#add-item")  # a composed query's row has its own "It is" and "weight"
    for width in range(420, 1400, 7):
        page.set_viewport_size({"width": width, "height": 900})
        labels = page.evaluate(SHORT_LABELS)
        assert [label["label"] for label in labels].count("It is") == 2, labels
        for label in labels:
            assert (width, label["lines"], label["besideControl"]) == (width, 1, True), label


def test_a_dropped_file_is_item_one_of_a_composed_query(server, page, tree):
    page.goto(server)
    expect(page.locator("#collection")).to_have_value(COLLECTION)
    page.click("#add-item")
    page.fill("#item-2-text", NIGHT)
    page.fill("#item-2-weight", "-0.5")
    before = page.url
    drop_file(page, tree / "audio/tone.wav", "audio/wav")
    expect(page.locator("#status")).to_have_text(
        f"Results 1–10 for tone.wav (detected) − 0.5 × “{NIGHT}”", timeout=30_000
    )
    items = [as_item(tree / "audio/tone.wav", 1), {"text": NIGHT, "weight": -0.5}]
    assert shown_ids(page, 10) == ids(search(server, items=items, limit=PAGE_SIZE))
    expect(page.locator("#first-file")).to_contain_text("tone.wav (detected)")
    assert page.url == before  # a file is not kept in a link, and the page says so
    expect(page.locator("#compose-note")).to_contain_text("files are not kept in links")


def test_a_file_item_the_vectorizer_refuses_leaves_the_query_as_it_was(
    server, page, tree, tmp_path
):
    """A JPEG cut short is an image to ib-search but no image to the inference server."""
    cut = tmp_path / "cut.jpg"
    cut.write_bytes((tree / "image/cat.jpg").read_bytes()[:2000])
    page.goto(server)
    expect(page.locator("#collection")).to_have_value(COLLECTION)
    compose_on_page(page, "a dog barking loudly", (cut, 0.5))
    page.click("#search-button")
    expect(page.locator("#error")).to_contain_text("query item 2 (image): ", timeout=30_000)
    expect(page.locator("#status")).to_have_text(
        "Could not search for “a dog barking loudly” + 0.5 × cut.jpg (detected)"
    )
    expect(page.locator("#results > li")).to_have_count(0)
    expect(page.locator("#query")).to_have_value("a dog barking loudly")
    expect(page.locator("#item-2-weight")).to_have_value("0.5")
    assert page.eval_on_selector("#item-2-file", "(input) => input.files[0].name") == "cut.jpg"


def test_hybrid_search_on_the_page_keeps_alpha_in_its_link(server, page):
    page.goto(server)
    expect(page.locator("#collection")).to_have_value(COLLECTION)
    page.fill("#query", "dog barking")
    page.check("#hybrid")
    page.fill("#alpha", "0")
    page.click("#search-button")
    expect(page.locator("#status")).to_have_text("Results 1–1 for “dog barking” (hybrid, alpha 0)")
    expect(page.locator("li.result")).to_have_attribute("data-source-id", "text/note.txt")
    expect(page.locator("li.result .distance")).to_contain_text("score ")
    assert link_query(page.url)["alpha"] == ["0"]
    page.reload()
    expect(page.locator("#hybrid")).to_be_checked()
    expect(page.locator("#alpha")).to_have_value("0")
    assert len(shown_ids(page, 1)) == 1
    page.fill("#alpha", "1")
    page.click("#search-button")
    assert len(shown_ids(page, 10)) == 10  # the vector side finds every object
    page.click("#add-item")
    expect(page.locator("#hybrid")).to_be_disabled()  # hybrid search is of one text query


def test_screenshot_of_a_composed_query(server, page, tree):
    """Text, an image file and a subtracted text, with their weights: saved for the docs."""
    page.goto(server)
    expect(page.locator("#collection")).to_have_value(COLLECTION)
    compose_on_page(page, "a dog barking loudly", (tree / "image/cat.jpg", 0.5), (NIGHT, -0.3))
    page.click("#search-button")
    items = [{"text": "a dog barking loudly", "weight": 1}, as_item(tree / "image/cat.jpg", 0.5),
             {"text": NIGHT, "weight": -0.3}]  # fmt: skip
    assert shown_ids(page, 10) == ids(search(server, items=items, limit=PAGE_SIZE))
    page.wait_for_function(
        """() => [...document.querySelectorAll('#results img')]
                 .every((img) => img.complete && img.naturalWidth > 0)""",
        timeout=30_000,
    )
    SCREENSHOTS.mkdir(exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "search-composed.png"))
