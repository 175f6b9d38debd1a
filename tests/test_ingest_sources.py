"""``pipelines.ingest.sources``: ``ReadObjects`` reading directories and manifests with Beam.

These tests run real Beam pipelines on the default runner and collect what
comes out through files, so they hold on any runner. How one file or row
becomes an object, without Beam, is tested in ``test_ingest_inputs``.
"""

from __future__ import annotations

import base64
import datetime
import gzip
import json
import pickle
import uuid
from pathlib import Path

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from apache_beam.metrics.metric import MetricsFilter

from ib_vectorizer.modalities import Modality
from pipelines.beam import Failure
from pipelines.ingest.elements import FieldValue, SourceObject
from pipelines.ingest.inputs import InputSpec, metadata_columns, parse_modality_columns, plan_fields
from pipelines.ingest.reader import ReadObjects

WAV = b"RIFF\x24\x00\x00\x00WAVEfmt "  # inline bytes: any bytes will do


def _dump(element, folder: str, tag: str) -> None:
    Path(folder, f"{tag}-{uuid.uuid4().hex}.pkl").write_bytes(pickle.dumps(element))


def read_all(tmp_path: Path, *specs: InputSpec):
    """Runs one pipeline reading every spec; returns [(objects by id, failures)] per spec."""
    out = tmp_path / f"out-{uuid.uuid4().hex}"
    out.mkdir()
    pipeline = beam.Pipeline()
    for i, spec in enumerate(specs):
        read = pipeline | f"Read{i}" >> ReadObjects(spec)
        read.objects | f"Objects{i}" >> beam.Map(_dump, str(out), f"{i}-objects")
        read.failures | f"Failures{i}" >> beam.Map(_dump, str(out), f"{i}-failures")
    result = pipeline.run()
    result.wait_until_finish()
    results = []
    for i in range(len(specs)):
        objects = [pickle.loads(f.read_bytes()) for f in out.glob(f"{i}-objects-*.pkl")]
        failures = [pickle.loads(f.read_bytes()) for f in out.glob(f"{i}-failures-*.pkl")]
        assert all(isinstance(o, SourceObject) for o in objects)
        assert all(isinstance(f, Failure) for f in failures)
        by_id = {o.source_id: o for o in objects}
        assert len(by_id) == len(objects), "duplicate ids"
        results.append((by_id, sorted(failures, key=lambda f: f.source)))
    return results, result


def counters(result) -> dict[str, int]:
    """The ib_ingest counters, summed over the steps that count them."""
    totals: dict[str, int] = {}
    for counter in result.metrics().query(MetricsFilter().with_namespace("ib_ingest"))["counters"]:
        name = counter.key.metric.name
        totals[name] = totals.get(name, 0) + (counter.committed or counter.attempted or 0)
    return totals


# -- directories --------------------------------------------------------------------------------


def test_directory_tree(tmp_path):
    root = tmp_path / "dataset"
    files = [
        "image/a.bin",  # modality from its folder, whatever the extension
        "image/deeper/b.dat",
        "audio/x.wav",
        "clips/b.mp4",  # from its extension
        "notes/readme.txt",
        "sensors/s.csv",
        "TOP.JPG",
        "odd/thing.xyz",  # neither: not media, skipped and counted
        ".hidden/ignored.png",  # hidden: ignored
        "image/.DS_Store",  # an OS's own, even in a modality folder: skipped and counted
    ]
    for name in files:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"x")
    spec = InputSpec(str(root))
    assert spec.kind == "directory"

    [(objects, failures)], result = read_all(tmp_path, spec)

    expected = {
        "image/a.bin": ("image", Modality.VISION),
        "image/deeper/b.dat": ("image", Modality.VISION),
        "audio/x.wav": ("audio", Modality.AUDIO),
        "clips/b.mp4": ("video", Modality.VIDEO),
        "notes/readme.txt": ("text", Modality.TEXT),
        "sensors/s.csv": ("imu", Modality.IMU),
        "TOP.JPG": ("image", Modality.VISION),
    }
    assert set(objects) == set(expected)
    for source_id, (name, modality) in expected.items():
        obj = objects[source_id]
        path = str(root / source_id)
        assert obj.source == path
        assert obj.fields == {name: FieldValue(modality, uri=path)}
        assert obj.properties == {}
        assert Path(obj.fields[name].uri).is_absolute()
    assert failures == []
    # Listed: every file, hidden ones and folder markers too; read: the objects made.
    assert counters(result) == {"listed": 10, "read": 7, "skipped": 2}


# -- manifests ----------------------------------------------------------------------------------

ROWS = [
    {
        "id": "r0",
        "image": "photos/a.jpg",
        "audio": WAV,
        "text_caption": "a cat\non two lines",
        "image_front": "/data/front/a.png",
        "n": 1,
        "score": 0.5,
        "label": "cat",
        "day": datetime.date(2024, 1, 2),
    },
    {  # no id
        "id": None,
        "image": "photos/b.jpg",
        "audio": None,
        "text_caption": "x",
        "image_front": None,
        "n": 2,
        "score": 1.5,
        "label": "dog",
        "day": datetime.date(2024, 1, 3),
    },
    {  # no media
        "id": "r2",
        "image": None,
        "audio": None,
        "text_caption": None,
        "image_front": "",
        "n": 3,
        "score": float("nan"),
        "label": "bird",
        "day": None,
    },
    {
        "id": "r3",
        "image": None,
        "audio": None,
        "text_caption": None,
        "image_front": "gs://bucket/front/d.png",
        "n": 4,
        "score": 2.0,
        "label": "eel",
        "day": datetime.date(2024, 1, 5),
    },
]
COLUMNS = list(ROWS[0])
SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("image", pa.string()),
        ("audio", pa.binary()),
        ("text_caption", pa.string()),
        ("image_front", pa.string()),
        ("n", pa.int64()),
        ("score", pa.float64()),
        ("label", pa.string()),
        ("day", pa.date32()),
    ]
)


def write_parquet(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(ROWS, schema=SCHEMA), path, row_group_size=3)
    return path


def test_parquet_manifest(tmp_path):
    manifest = write_parquet(tmp_path / "set" / "manifest.parquet")
    folder = manifest.parent
    default = InputSpec(str(manifest))
    by_label = InputSpec(str(manifest), id_column="label")
    photo = folder / "other.pq"
    pq.write_table(
        pa.table(
            {"key": [7, 8], "photo": ["p/7.jpg", None], "text": ["seven", " "], "note": ["a", "b"]}
        ),
        photo,
    )
    renamed = InputSpec(str(photo), "key", parse_modality_columns("image=photo"))

    assert default.kind == "parquet" and renamed.kind == "parquet"
    assert plan_fields(default) == {
        "image": Modality.VISION,
        "audio": Modality.AUDIO,
        "text_caption": Modality.TEXT,
        "image_front": Modality.VISION,
    }
    assert metadata_columns(default) == ["n", "score", "label", "day"]
    assert metadata_columns(by_label) == ["id", "n", "score", "day"]
    assert plan_fields(renamed) == {"photo": Modality.VISION, "text": Modality.TEXT}
    assert metadata_columns(renamed) == ["note"]

    [(objects, failures), (labelled, label_failures), (photos, photo_failures)], _ = read_all(
        tmp_path, default, by_label, renamed
    )

    assert set(objects) == {"r0", "r3"}
    r0 = objects["r0"]
    assert r0.source == f"{manifest}:row 0"
    assert r0.fields == {
        "image": FieldValue(Modality.VISION, uri=str(folder / "photos/a.jpg")),
        "audio": FieldValue(Modality.AUDIO, data=WAV),
        "text_caption": FieldValue(Modality.TEXT, text="a cat\non two lines"),
        "image_front": FieldValue(Modality.VISION, uri="/data/front/a.png"),
    }
    assert r0.properties == {"n": 1, "score": 0.5, "label": "cat", "day": "2024-01-02"}
    assert type(r0.properties["n"]) is int
    r3 = objects["r3"]
    assert r3.source == f"{manifest}:row 3"  # numbered across row groups
    assert r3.fields == {"image_front": FieldValue(Modality.VISION, uri="gs://bucket/front/d.png")}
    assert [(f.id, f.source, f.stage) for f in failures] == [
        ("", f"{manifest}:row 1", "read"),
        ("r2", f"{manifest}:row 2", "read"),
    ]
    assert "no 'id' value" in failures[0].error
    assert "no media or text" in failures[1].error and "image_front" in failures[1].error

    # --id-column: another column is the id; "id" becomes metadata.
    assert set(labelled) == {"cat", "dog", "eel"}
    assert labelled["dog"].properties["id"] is None
    assert labelled["cat"].properties["id"] == "r0"
    assert [f.id for f in label_failures] == ["bird"]

    # --modality-columns: "photo" holds images; int ids become strings; blank text is absent.
    assert photos == {
        "7": SourceObject(
            "7",
            f"{photo}:row 0",
            {
                "photo": FieldValue(Modality.VISION, uri=str(folder / "p/7.jpg")),
                "text": FieldValue(Modality.TEXT, text="seven"),
            },
            {"note": "a"},
        )
    }
    assert [(f.id, f.source) for f in photo_failures] == [("8", f"{photo}:row 1")]


def text_rows() -> list[dict]:
    """ROWS as a text manifest holds them: strings, inline bytes as base64."""
    rows = []
    for row in ROWS:
        text = {}
        for key, value in row.items():
            if isinstance(value, bytes):
                value = "base64:" + base64.b64encode(value).decode()
            elif isinstance(value, float) and value != value:
                value = None
            elif value is not None:
                value = str(value)
            text[key] = value
        rows.append(text)
    return rows


def write_csv(path: Path, rows: list[dict], extra_lines: str = "") -> Path:
    import csv
    import io

    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(COLUMNS)
    for row in rows:
        writer.writerow(["" if row[c] is None else row[c] for c in COLUMNS])
    path.write_text(buffer.getvalue() + extra_lines, encoding="utf-8")
    return path


def test_csv_and_jsonl_manifests_give_the_same_objects(tmp_path):
    rows = text_rows()
    csv_path = write_csv(tmp_path / "m.csv", rows, extra_lines="\nr9,too,few\n")
    lines = [json.dumps(row) for row in rows]
    # A data URI holds inline bytes too.
    lines[0] = lines[0].replace("base64:", "data:audio/wav;base64,")
    lines[2:2] = ["", "not json", "[1, 2]"]
    jsonl_path = tmp_path / "m.jsonl"
    jsonl_path.write_text("\n".join(lines) + "\n")
    gz_path = tmp_path / "m.ndjson.gz"
    gz_path.write_bytes(gzip.compress(jsonl_path.read_bytes()))
    specs = [InputSpec(str(p)) for p in (csv_path, jsonl_path, gz_path)]
    assert [s.kind for s in specs] == ["csv", "jsonl", "jsonl"]
    for spec in specs:
        assert plan_fields(spec) == plan_fields(InputSpec(str(write_parquet(tmp_path / "p.pq"))))
        assert metadata_columns(spec) == ["n", "score", "label", "day"]

    results, result = read_all(tmp_path, *specs)

    def content(objects):
        return {k: (o.fields, o.properties) for k, o in objects.items()}

    (csv_objects, csv_failures), (jsonl_objects, jsonl_failures), (gz_objects, gz_failures) = (
        results
    )
    assert content(csv_objects) == content(jsonl_objects) == content(gz_objects)
    r0 = csv_objects["r0"]
    assert r0.fields["audio"] == FieldValue(Modality.AUDIO, data=WAV)
    assert r0.fields["image"] == FieldValue(Modality.VISION, uri=str(tmp_path / "photos/a.jpg"))
    assert r0.fields["text_caption"].text == "a cat\non two lines"  # a quoted multi-line cell
    assert r0.properties == {"n": "1", "score": "0.5", "label": "cat", "day": "2024-01-02"}
    assert csv_objects["r3"].properties["day"] == "2024-01-05"
    assert r0.source == f"{csv_path}:line 2"
    assert csv_objects["r3"].source == f"{csv_path}:line 6"  # line 3 continues the caption
    assert [(f.id, f.source) for f in csv_failures] == [
        ("", f"{csv_path}:line 4"),
        ("r2", f"{csv_path}:line 5"),
        ("r9", f"{csv_path}:line 8"),  # line 7 is blank
    ]
    assert "3 cells where the header has 9" in csv_failures[2].error

    assert jsonl_objects["r3"].source == f"{jsonl_path}:line 7"
    assert [(f.id, f.source) for f in jsonl_failures] == [
        ("", f"{jsonl_path}:line 2"),
        ("", f"{jsonl_path}:line 4"),
        ("", f"{jsonl_path}:line 5"),
        ("r2", f"{jsonl_path}:line 6"),
    ]
    errors = [f.error for f in jsonl_failures]
    assert "no 'id' value" in errors[0]
    assert errors[1].startswith("not JSON") and "'not json'" in errors[1]
    assert errors[2] == "expected a JSON object, got list"
    assert [f.error for f in gz_failures] == errors
    assert counters(result) == {"listed": 17, "read": 2 + 2 + 2, "read_failed": 3 + 4 + 4}


def test_unreadable_input_fails_at_construction(tmp_path):
    (tmp_path / "m.xlsx").write_bytes(b"")
    with pytest.raises(ValueError, match="neither a directory nor a manifest"):
        ReadObjects(InputSpec(str(tmp_path / "m.xlsx")))
    with pytest.raises(ValueError, match=r"^--input m\.xlsx does not exist$"):
        ReadObjects(InputSpec("m.xlsx"))
