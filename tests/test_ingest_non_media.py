"""What a real dataset directory holds besides media, through ib-ingest and the server.

README files, JSON sidecars and the files operating systems leave behind are
skipped and counted, not failed; vector images (SVG) fail, wherever they
are, with a reason that says to rasterise them; a missing ``--input`` says so.
"""

from __future__ import annotations

import base64
import gzip
import io
import json
import logging
import re

import pytest
from PIL import Image

from ib_vectorizer.errors import MediaError
from ib_vectorizer.preprocess.grayscale import load_depth
from ib_vectorizer.preprocess.image import image_cost, load_image, vector_format
from pipelines.ingest.command import main as ingest
from pipelines.ingest.elements import NOT_MEDIA, OS_FILES, Skipped
from pipelines.ingest.progress import skipped_note
from pipelines.ingest.to_objects import file_to_object

from .test_ingest import DIRECTORY_FILES, copy_dataset, count, read_failures, run_ingest
from .wire import post

SVG = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n'
    b'<svg xmlns="http://www.w3.org/2000/svg" width="64" height="64">'
    b'<circle cx="32" cy="32" r="30" fill="teal"/></svg>\n'
)
RASTERISE = "a vector image (SVG): rasterise it first (e.g. to PNG)"
JUNK = {  # relative path → bytes: skipped, neither failed nor written
    "README.md": b"# My dataset\n",
    "notes.json": b'{"source": "camera 2"}\n',
    ".DS_Store": b"\x00\x00\x00\x01Bud1",
    "._photo.jpg": b"\x00\x05\x16\x07AppleDouble",
    "image/Thumbs.db": b"\xd0\xcf\x11\xe0",  # an OS's own file, even in a modality folder
}
VECTORS = {"logo.svg": "read", "image/icon.svg": "decode"}  # → the stage that refuses it


def test_non_media_is_skipped_and_vector_images_fail(stack, client, tmp_path, caplog):
    root = copy_dataset(tmp_path / "dataset")
    for relative, data in JUNK.items():
        (root / relative).write_bytes(data)
    for relative in VECTORS:
        (root / relative).write_bytes(SVG)
    failures = tmp_path / "failures.jsonl"
    metrics = tmp_path / "metrics.json"
    with caplog.at_level(logging.INFO, logger="ib_ingest"):
        status = run_ingest(stack, root, "NonMedia", failures, "--metrics-json", str(metrics))
    assert status == 0

    media = len(DIRECTORY_FILES) + 1  # and text/note.txt
    counters = json.loads(metrics.read_text())["counters"]
    assert counters["skipped"] == len(JUNK)
    assert counters["read_failed"] + counters["failed"] == len(VECTORS)
    assert counters["read"] == media + 1  # image/icon.svg is read, then refused by its bytes
    assert counters["written"] == counters["embedded"] == media
    assert count(client, "NonMedia") == media

    dead = {row["id"]: row for row in read_failures(failures)}
    assert set(dead) == set(VECTORS)  # nothing skipped is a dead letter
    for source_id, stage in VECTORS.items():
        assert dead[source_id]["stage"] == stage, dead[source_id]
        assert RASTERISE in dead[source_id]["error"], dead[source_id]

    summary = [r.getMessage() for r in caplog.records if r.getMessage().startswith("done in")]
    assert len(summary) == 1, summary
    assert f"written {media}, failed 2," in summary[0]
    assert (
        f"skipped {len(JUNK)} (not media: notes.json, README.md; "
        "OS files: ._photo.jpg, .DS_Store, Thumbs.db)"
    ) in summary[0]


def test_the_server_refuses_a_vector_image_with_the_reason(stack):
    url = stack.endpoints.vectorizer
    for data, kind in ((SVG, "SVG"), (gzip.compress(SVG), "SVGZ")):
        status, body, _ = post(url, {"images": [base64.b64encode(data).decode()]})
        assert 400 <= status < 500, (status, body)
        assert body["error"] == (
            f"images[0]: a vector image ({kind}): rasterise it first (e.g. to PNG)"
        ), body


def test_a_missing_input_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    for path in ("./x", "./x/", "./x.csv"):
        assert ingest(["--input", path, "--collection", "C"]) == 1
        lines = capsys.readouterr().err.strip().splitlines()
        assert lines == [f"ib-ingest: --input {path} does not exist"], lines


# -- without the stack ---------------------------------------------------------------------------


def _eps() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, "EPS")
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("data", "kind"),
    [
        (SVG, "SVG"),
        (b"\xef\xbb\xbf\n  <svg xmlns='http://www.w3.org/2000/svg'/>", "SVG"),
        (b"<!-- made by hand -->\n<svg/>", "SVG"),
        (gzip.compress(SVG), "SVGZ"),
        (b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n", "PDF"),
        (_eps(), "EPS"),
    ],
)
def test_vector_images_are_refused_by_their_bytes(data, kind):
    assert vector_format(data) == kind
    reason = f"a vector image ({kind}): rasterise it first (e.g. to PNG)"
    for decode in (load_image, image_cost, load_depth):
        with pytest.raises(MediaError, match=f"^{re.escape(reason)}$"):
            decode(data)


def test_other_bytes_are_no_vector_image():
    png = io.BytesIO()
    Image.new("RGB", (8, 8)).save(png, "PNG")
    for data in (png.getvalue(), b"<html><svg/></html>", gzip.compress(b"not svg"), b"\x1f\x8b"):
        assert vector_format(data) is None, data
    assert load_image(png.getvalue()).shape == (3, 224, 224)
    with pytest.raises(MediaError, match="not a decodable image file"):
        load_image(b"<html><svg/></html>")


def test_which_files_of_a_directory_are_skipped():
    root = "gs://bucket/set"
    skipped = {
        "README.md": (NOT_MEDIA, ".md"),
        "docs/notes.JSON": (NOT_MEDIA, ".json"),
        "photo.xmp": (NOT_MEDIA, ".xmp"),
        "paper.pdf": (NOT_MEDIA, ".pdf"),
        "LICENSE": (NOT_MEDIA, "license"),
        ".DS_Store": (OS_FILES, ".ds_store"),
        "image/Thumbs.db": (OS_FILES, "thumbs.db"),
        "audio/desktop.ini": (OS_FILES, "desktop.ini"),
        "._photo.jpg": (OS_FILES, "._*"),
        "image/._cat.jpg": (OS_FILES, "._*"),
    }
    for relative, (why, kind) in skipped.items():
        assert file_to_object(f"{root}/{relative}", root) == Skipped(relative, why, kind)
    for relative in ("notes/a.txt", "run.csv", "x.npy", "a.avif", "image/README.md"):
        assert not isinstance(file_to_object(f"{root}/{relative}", root), Skipped), relative
    for relative in ("logo.svg", "logo.SVGZ", "figure.eps", "drawing.ai"):
        with pytest.raises(ValueError, match=r"^a vector image .*: rasterise it first"):
            file_to_object(f"{root}/{relative}", root)
    assert file_to_object(f"{root}/.gitignore", root) is None  # hidden: ignored, as before


def test_the_summary_names_a_few_kinds():
    entries = {
        "not media\t.md\tREADME.md",
        "not media\t.md\tCHANGES.md",  # the same kind, from another worker
        "not media\t.json\tnotes.json",
        "not media\t.xmp\tIMG_1.xmp",
        "not media\t.yaml\tmeta.yaml",
        "OS files\t.ds_store\t.DS_Store",
    }
    assert skipped_note(entries) == (
        "not media: CHANGES.md, IMG_1.xmp, meta.yaml, ...; OS files: .DS_Store"
    )
    assert skipped_note(set()) == ""
