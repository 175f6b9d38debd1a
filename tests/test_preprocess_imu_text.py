"""IMU layouts and text tokenisation."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from ib_vectorizer.errors import MediaError
from ib_vectorizer.preprocess.imu import (
    _parse_csv_carefully,
    _parse_plain_csv,
    load_imu,
    parse_imu_csv,
)
from ib_vectorizer.preprocess.text import load_text

HEADER = "gyro_x,gyro_y,gyro_z,accl_x,accl_y,accl_z\n"


def csv_bytes(table: np.ndarray, header: bool = True) -> bytes:
    body = "\n".join(",".join(f"{v:.6f}" for v in row) for row in table)
    return ((HEADER if header else "") + body + "\n").encode()


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


@pytest.fixture
def table() -> np.ndarray:
    rng = np.random.default_rng(7)
    return rng.normal(size=(1234, 6)).round(6)


def test_csv_is_transposed_and_padded(table):
    out = load_imu(csv_bytes(table))
    assert out.shape == (6, 2000) and out.dtype == torch.float32
    np.testing.assert_allclose(out[:, :1234].numpy(), table.T, atol=1e-6)
    assert (out[:, 1234:] == 0).all()
    # Channel 1 holds column 1 over time, not a reshaped jumble of rows.
    np.testing.assert_allclose(out[1, :5].numpy(), table[:5, 1], atol=1e-6)


def test_long_recording_is_cut_on_the_right():
    table = np.arange(2500 * 6, dtype=np.float64).reshape(2500, 6)
    out = load_imu(csv_bytes(table))
    np.testing.assert_allclose(out.numpy(), table[:2000].T)


def test_csv_without_header_reads_every_row(table):
    torch.testing.assert_close(load_imu(csv_bytes(table, header=False)), load_imu(csv_bytes(table)))


CSV_VARIANTS = {
    "header": HEADER + "1,2,3,4,5,6\n7,8,9,10,11,12\n",
    "no header, no final newline": "1,2,3,4,5,6\n7,8,9,10,11,12",
    "CRLF": HEADER.replace("\n", "\r\n") + "1,2,3,4,5,6\r\n7,8,9,10,11,12\r\n",
    "spaces around cells": " 1, 2 ,3,4,5,6\n7,8,9,10,11,12 \n",
    "blank lines": "\n\n" + HEADER + "1,2,3,4,5,6\n\n7,8,9,10,11,12\n\n",
    "exponents": "1e-3,2.5E+2,-3,4,5,6\n",
    "underscores": "1_000,2,3,4,5,6\n",
    "quoted cells": '"1","2",3,4,5,6\n',
    "comment as header": "# recorded 2024\n1,2,3,4,5,6\n",
}
# Read by numpy's C reader; the others take the careful path.
PLAIN = {
    "header",
    "no header, no final newline",
    "CRLF",
    "spaces around cells",
    "blank lines",
    "exponents",
    "comment as header",
}


@pytest.mark.parametrize("name", CSV_VARIANTS)
def test_numpy_reader_and_careful_reader_agree(name):
    text = CSV_VARIANTS[name]
    fast = _parse_plain_csv(text)
    assert (fast is not None) == (name in PLAIN)
    careful = _parse_csv_carefully(text)
    if fast is not None:
        assert np.array_equal(fast, careful)
    assert np.array_equal(parse_imu_csv(text.encode()), careful)


def test_npy_in_either_layout(table):
    from_csv = load_imu(csv_bytes(table))
    torch.testing.assert_close(load_imu(npy_bytes(table.T)), from_csv)
    torch.testing.assert_close(load_imu(npy_bytes(table)), from_csv)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "IMU file is empty"),
        (HEADER.encode(), "no data rows"),
        (b"a,b,c,d,e\n1,2,3,4,5\n", "has 5 columns; expected 6"),
        (HEADER.encode() + b"1,2,3,4,5,6\n1,2,nan,4,5,6\n", "NaN or infinite values"),
        (HEADER.encode() + b"1,2,3,4,5,6\n1,2,x,4,5,6\n", "row 2, column 3: 'x' is not a number"),
        (b"\xff\xfe\x00garbage", "neither a UTF-8 CSV nor a .npy"),
    ],
)
def test_bad_imu_is_explained(data, message):
    with pytest.raises(MediaError, match=message):
        load_imu(data)


def test_npy_of_wrong_shape_is_explained():
    with pytest.raises(MediaError, match=r"shape \(5, 100\)"):
        load_imu(npy_bytes(np.zeros((5, 100))))
    with pytest.raises(MediaError, match="2-D numbers"):
        load_imu(npy_bytes(np.zeros((6, 10, 2))))


def test_text_is_sot_tokens_eot_padding():
    ids = load_text("a dog")
    assert ids.shape == (77,) and ids.dtype == torch.int64
    assert ids[0] == 49406 and ids[3] == 49407 and (ids[4:] == 0).all()


def test_long_text_keeps_end_of_text_token():
    ids = load_text("word " * 200)
    assert ids[-1] == 49407 and ids.argmax() == 76


def test_text_is_cleaned_like_clip():
    torch.testing.assert_close(load_text("A  Dog&amp;\tCat "), load_text("a dog& cat"))


def test_text_accepts_utf8_bytes_and_rejects_others():
    torch.testing.assert_close(load_text("café".encode()), load_text("café"))
    with pytest.raises(MediaError, match="UTF-8"):
        load_text(b"\xff\xfe")
    with pytest.raises(MediaError, match="must be a string"):
        load_text(42)
