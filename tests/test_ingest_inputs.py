"""Planning and turning files and rows into objects, without running Beam.

Covers ``pipelines.ingest.inputs`` (``InputSpec``, column modalities, the plan
from headers), ``pipelines.ingest.to_objects`` and ``pipelines.paths``.
The Beam reader is tested in ``test_ingest_sources``.
"""

from __future__ import annotations

import ast
import base64
import datetime
import decimal
import json
import os
import re
import tempfile
from pathlib import Path

import numpy as np
import pytest

from ib_vectorizer.modalities import Modality
from pipelines.ingest.elements import NOT_MEDIA, FieldValue, Skipped, SourceObject
from pipelines.ingest.inputs import (
    InputSpec,
    metadata_columns,
    modality_of_column,
    parse_modality_columns,
    plan_fields,
)
from pipelines.ingest.to_objects import file_to_object, row_to_object
from pipelines.paths import absolute, dirname, has_scheme, local_copy, relpath, resolve

ALL_FIELDS = {
    "image": Modality.VISION,
    "audio": Modality.AUDIO,
    "video": Modality.VIDEO,
    "depth": Modality.DEPTH,
    "thermal": Modality.THERMAL,
    "imu": Modality.IMU,
    "text": Modality.TEXT,
}


# -- directories --------------------------------------------------------------------------------


def test_directory_plan_is_every_modality_without_listing(tmp_path):
    spec = InputSpec(str(tmp_path) + "/")
    assert plan_fields(spec) == ALL_FIELDS
    assert list(plan_fields(spec)) == ["image", "text", "audio", "video", "depth", "thermal", "imu"]
    assert metadata_columns(spec) == []
    assert plan_fields(InputSpec("gs://bucket/dataset")) == ALL_FIELDS  # nothing is listed


def test_file_to_object_on_object_stores():
    obj = file_to_object("gs://bucket/set/depth/scene/1.png", "gs://bucket/set")
    assert obj == SourceObject(
        "depth/scene/1.png",
        "gs://bucket/set/depth/scene/1.png",
        {"depth": FieldValue(Modality.DEPTH, uri="gs://bucket/set/depth/scene/1.png")},
    )
    assert file_to_object("gs://bucket/set/sub/", "gs://bucket/set/") is None  # folder marker
    assert file_to_object("gs://bucket/set/a/.cache/x.jpg", "gs://bucket/set") is None
    readme = file_to_object("gs://bucket/set/README", "gs://bucket/set")
    assert readme == Skipped("README", NOT_MEDIA, "readme")  # not media: skipped, no failure


# -- rows, one at a time ------------------------------------------------------------------------


def test_row_to_object_values():
    spec = InputSpec("m.jsonl", modality_columns={"clip": "audio", "scan": Modality.DEPTH})
    row = {
        "id": 12.0,  # pandas makes int ids with gaps floats
        "image": "./a/../b.jpg",
        "image_s3": "s3://bucket/c.jpg",
        "video": "data:video/mp4,%00%01",
        "clip": bytearray(b"\x01\x02"),
        "scan": "base64:" + base64.b64encode(b"\x03").decode(),
        "text": b"caf\xc3\xa9",
        "thermal": "   ",
        "imu_left": None,
        "count": np.int64(3),
        "ratio": np.float32(0.25),
        "flag": np.bool_(True),
        "seen": datetime.datetime(2024, 5, 6, 7, 8, 9),
        "price": decimal.Decimal("1.25"),
        "nan": float("inf"),
        "blob": b"\xff",
        "tags": np.array(["a", "b"]),
        "nested": {"k": [np.int32(1), None]},
    }
    obj = row_to_object(row, spec, "/base", "m.jsonl:line 1")
    assert obj.source_id == "12" and obj.source == "m.jsonl:line 1"
    assert obj.fields == {
        "image": FieldValue(Modality.VISION, uri="/base/b.jpg"),
        "image_s3": FieldValue(Modality.VISION, uri="s3://bucket/c.jpg"),
        "video": FieldValue(Modality.VIDEO, data=b"\x00\x01"),
        "clip": FieldValue(Modality.AUDIO, data=b"\x01\x02"),
        "scan": FieldValue(Modality.DEPTH, data=b"\x03"),
        "text": FieldValue(Modality.TEXT, text="café"),
    }
    assert obj.properties == {
        "count": 3,
        "ratio": 0.25,
        "flag": True,
        "seen": "2024-05-06T07:08:09",
        "price": 1.25,
        "nan": None,
        "blob": "/w==",
        "tags": ["a", "b"],
        "nested": {"k": [1, None]},
    }
    assert json.loads(json.dumps(obj.properties, allow_nan=False)) == obj.properties
    assert type(obj.properties["count"]) is int and type(obj.properties["flag"]) is bool

    remote = row_to_object({"id": "x", "audio": "a.wav"}, spec, "gs://b/set", "label")
    assert remote.fields["audio"].uri == "gs://b/set/a.wav"


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"image": "a.jpg"}, "no 'id' value"),
        ({"id": "  ", "image": "a.jpg"}, "no 'id' value"),
        ({"id": "a", "label": "x"}, "no media or text column"),
        ({"id": "a", "image": None, "text": ""}, r"no media or text \(empty: image, text\)"),
        ({"id": "a", "image": "base64:%%%"}, "column 'image': not valid base64"),
        (
            {"id": "a", "image": 5},
            "column 'image' holds a value of type int, not a path, URI or bytes",
        ),
        ({"id": "a", "text": b"\xff"}, "column 'text': text is not UTF-8"),
        ({"id": "a", "audio": "data:audio/wav;base64"}, "a data URI needs a ','"),
    ],
)
def test_row_to_object_rejects(row, message):
    with pytest.raises(ValueError, match=message):
        row_to_object(row, InputSpec("m.csv"), "/base", "m.csv:line 2")


# -- columns and specs --------------------------------------------------------------------------


def test_modality_of_column():
    assert modality_of_column("image") is Modality.VISION
    assert modality_of_column("image_front") is Modality.VISION
    assert modality_of_column("text_caption") is Modality.TEXT
    assert modality_of_column("imu_wrist", {}) is Modality.IMU
    assert modality_of_column("imagery") is None
    assert modality_of_column("vision") is None  # "vision" names a modality only in overrides
    assert modality_of_column("_image") is None
    assert modality_of_column("photo", {"photo": Modality.VISION}) is Modality.VISION
    assert modality_of_column("image_raw", {"image_raw": Modality.DEPTH}) is Modality.DEPTH
    assert Modality.VISION.label == "image" and {m.label for m in Modality} == set(ALL_FIELDS)


def test_parse_modality_columns():
    assert parse_modality_columns("") == {}
    assert parse_modality_columns("image=photo,audio=clip") == {
        "photo": Modality.VISION,
        "clip": Modality.AUDIO,
    }
    assert parse_modality_columns(" vision = pic , Text=caption, image=pic,") == {
        "pic": Modality.VISION,
        "caption": Modality.TEXT,
    }
    assert parse_modality_columns("images=pic,texts=caption") == {
        "pic": Modality.VISION,
        "caption": Modality.TEXT,
    }


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("image", "MODALITY=COLUMN pairs"),
        ("image=", "MODALITY=COLUMN pairs"),
        ("=photo", "MODALITY=COLUMN pairs"),
        ("picture=photo", "unknown modality 'picture'.*image, text, audio, video"),
        ("image=x,audio=x", "column 'x' two modalities: image and audio"),
    ],
)
def test_parse_modality_columns_rejects(text, message):
    with pytest.raises(ValueError, match=message):
        parse_modality_columns(text)


def test_input_spec_kind(tmp_path):
    kinds = {
        "m.parquet": "parquet",
        "m.PQ": "parquet",
        "m.csv": "csv",
        "m.csv.gz": "csv",
        "m.jsonl": "jsonl",
        "m.ndjson.bz2": "jsonl",
        "gs://bucket/m.parquet": "parquet",
        "gs://bucket/set": "directory",
        "s3://bucket/set/": "directory",
        str(tmp_path): "directory",
    }
    for path, kind in kinds.items():
        assert InputSpec(path).kind == kind, path
    for name in ("m.xlsx", "m.parquet.gz"):
        (tmp_path / name).write_bytes(b"")
        with pytest.raises(ValueError, match=r"\.parquet/\.pq, \.csv or \.jsonl"):
            InputSpec(str(tmp_path / name)).kind  # noqa: B018
    for path in (str(tmp_path / "missing"), str(tmp_path / "missing") + "/", "m.xlsx"):
        with pytest.raises(ValueError, match=f"^--input {re.escape(path)} does not exist$"):
            InputSpec(path).kind  # noqa: B018
    with pytest.raises(ValueError, match="unknown modality 'sound'"):
        InputSpec("m.csv", modality_columns={"clip": "sound"})
    assert InputSpec("m.csv", modality_columns={"clip": "audio"}).modality_columns == {
        "clip": Modality.AUDIO
    }


def test_plan_reads_headers_only(tmp_path):
    csv_path = tmp_path / "h.csv"
    csv_path.write_text("\ufeffkey, photo ,text_title,year\n")  # BOM and spaces
    spec = InputSpec(str(csv_path), "key", {"photo": Modality.VISION})
    assert plan_fields(spec) == {"photo": Modality.VISION, "text_title": Modality.TEXT}
    assert metadata_columns(spec) == ["year"]

    jsonl_path = tmp_path / "h.jsonl"
    jsonl_path.write_text(
        '{"id": 1, "audio": "a.wav"}\nbad\n{"id": 2, "depth_z": "d.png", "k": 1}\n'
    )
    assert plan_fields(InputSpec(str(jsonl_path))) == {
        "audio": Modality.AUDIO,
        "depth_z": Modality.DEPTH,
    }
    assert metadata_columns(InputSpec(str(jsonl_path))) == ["k"]

    with pytest.raises(ValueError, match=r"has no 'key' column.*--id-column"):
        plan_fields(InputSpec(str(jsonl_path), "key"))
    with pytest.raises(ValueError, match=r"names column.*photo.*lacks"):
        plan_fields(InputSpec(str(jsonl_path), modality_columns={"photo": Modality.VISION}))
    with pytest.raises(ValueError, match="cannot be both the id and a media column"):
        plan_fields(InputSpec(str(jsonl_path), modality_columns={"id": Modality.VISION}))
    no_media = tmp_path / "n.csv"
    no_media.write_text("id,name\n1,x\n")
    with pytest.raises(ValueError, match=r"no media or text column.*--modality-columns"):
        metadata_columns(InputSpec(str(no_media)))
    with pytest.raises(ValueError, match=r"missing\.parquet does not exist"):
        plan_fields(InputSpec(str(tmp_path / "missing.parquet")))
    with pytest.raises(ValueError, match="no manifest matches"):
        plan_fields(InputSpec(str(tmp_path / "missing-*.parquet")))


# -- paths and URIs -----------------------------------------------------------------------------


def test_has_scheme():
    for uri in ("gs://bucket/a", "s3://b/c.jpg", "file:///tmp/x", "hdfs+x.y-z://h/p"):
        assert has_scheme(uri), uri
    for path in (None, "", "a/b.jpg", "/abs/c.png", "C:\\data\\x", "/a://b", "1x://y", "://z"):
        assert not has_scheme(path), path


def test_uris_are_told_from_paths_by_has_scheme_alone():
    """A second spelling (``"://" in path``) would read ``/a://b`` as a URI."""
    root = Path(__file__).resolve().parent.parent
    spelt_again = []
    for path in [*root.glob("ib_vectorizer/**/*.py"), *root.glob("pipelines/**/*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Compare) and any(
                isinstance(operand, ast.Constant) and operand.value == "://"
                for operand in (node.left, *node.comparators)
            ):
                spelt_again.append(f"{path.relative_to(root)}:{node.lineno}")
    assert not spelt_again, f"use pipelines.paths.has_scheme: {spelt_again}"


def test_paths_and_uris():
    assert absolute("gs://b/set") == "gs://b/set"
    assert absolute("rel/m.csv") == os.path.abspath("rel/m.csv")
    assert dirname("gs://b/set/m.csv") == "gs://b/set"
    assert dirname("/data/set/m.csv") == "/data/set"
    assert resolve("./a/../b.jpg", "/base") == "/base/b.jpg"
    assert resolve("a.wav", "gs://b/set/") == "gs://b/set/a.wav"
    assert resolve("/abs/c.png", "gs://b/set") == "/abs/c.png"
    assert resolve("s3://x/y", "/base") == "s3://x/y"
    assert relpath("/data/set/image/a.jpg", "/data/set/") == "image/a.jpg"
    assert relpath("gs://b/set/x/y.png", "gs://b/set") == "x/y.png"
    with pytest.raises(ValueError, match="is not under"):
        relpath("/data/settle/a.jpg", "/data/set")


def test_local_copy_copies_once(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    checkpoint = tmp_path / "weights.pth"
    checkpoint.write_bytes(b"weights")
    copy = local_copy(str(checkpoint))
    assert copy == str(tmp_path / "tmp" / "ib_vectorizer" / "weights.pth")
    assert Path(copy).read_bytes() == b"weights"
    checkpoint.write_bytes(b"changed")
    assert local_copy(str(checkpoint)) == copy  # already here: not copied again
    assert Path(copy).read_bytes() == b"weights"
    assert os.listdir(os.path.dirname(copy)) == ["weights.pth"]  # no partial file left
