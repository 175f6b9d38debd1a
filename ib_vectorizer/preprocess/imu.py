"""IMU recordings → (6, N): six channels of N = ``imu_samples`` samples (2000: 5 s at 400 Hz).

Accepted layouts (the format is told by the bytes, not a file name):

* CSV, one row per sample and one column per channel, in the order
  gyro_x, gyro_y, gyro_z, accl_x, accl_y, accl_z (Ego4D's). A first row with
  any non-numeric cell is a header and is skipped; other rows must be numbers.
  The (T, 6) table is **transposed** to (6, T) (the Weaviate reference
  container reshapes instead, which scrambles the channels).
* NumPy ``.npy`` of shape (6, T), or (T, 6) which is transposed.

T shorter than N is zero-padded on the right, longer is cut: only the first
N rows of a CSV are read, and only the first N samples of an array are
converted, so a long recording costs no more than a short one. NaN or
infinite values among them, and values too large for float32 (the model's
type), are rejected: they would poison the whole embedding. A ``.npy`` whose
header claims more data than the file holds is refused before it is read.
"""

from __future__ import annotations

import csv
import io
import math
import warnings

import numpy as np
import torch

from ..errors import MediaError
from .config import IMAGEBIND_HUGE, IMU_CHANNEL_NAMES, IMU_CHANNELS
from .limits import ItemCost

_NPY_MAGIC = b"\x93NUMPY"


def _is_number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True


def parse_imu_csv(data: bytes, max_rows: int | None = None) -> np.ndarray:
    """CSV bytes → float64 (6, T); with ``max_rows``, T is at most that (the rest is not read)."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise MediaError("IMU data is neither a UTF-8 CSV nor a .npy array") from None
    if max_rows is not None:
        first = _first_lines(text, 1)
        header = not all(_is_number(cell) for cell in first.split(","))
        text = _first_lines(text, max_rows + header)
    plain = _parse_plain_csv(text)
    values = plain if plain is not None else _parse_csv_carefully(text)
    return values if max_rows is None else values[:, :max_rows]


def _first_lines(text: str, count: int) -> str:
    """``text`` up to the end of its ``count``-th line that is not blank.

    Scanned in place: a ``StringIO`` over a 50 MB text would copy it at four bytes a
    character.
    """
    start = 0
    while count > 0 and start < len(text):
        end = text.find("\n", start)
        end = len(text) if end < 0 else end + 1
        count -= bool(text[start:end].strip())
        start = end
    return text[:start]


def _parse_plain_csv(text: str) -> np.ndarray | None:
    """The usual file (an optional header, then six numbers per line) by numpy's C reader.

    Five times faster than the careful parser; ``None`` for anything else, so
    the careful parser reads it or says which row and column are wrong.
    """
    first, _, rest = text.lstrip().partition("\n")
    body = rest if not all(_is_number(cell) for cell in first.split(",")) else text
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # loadtxt only warns about an empty input
            values = np.loadtxt(io.StringIO(body), delimiter=",", ndmin=2, comments=None)
    except (ValueError, UserWarning):
        return None
    if values.shape[0] == 0 or values.shape[1] != IMU_CHANNELS:
        return None
    return values.T


def _parse_csv_carefully(text: str) -> np.ndarray:
    try:
        rows = [row for row in csv.reader(io.StringIO(text)) if any(cell.strip() for cell in row)]
    except csv.Error as err:  # a stray carriage return, a field of megabytes
        raise MediaError(f"IMU CSV cannot be read as CSV ({err})") from None
    if rows and not all(_is_number(cell) for cell in rows[0]):
        rows = rows[1:]  # header
    if not rows:
        raise MediaError("IMU CSV has no data rows")
    values = np.empty((len(rows), IMU_CHANNELS), dtype=np.float64)
    for line, row in enumerate(rows, start=1):
        if len(row) != IMU_CHANNELS:
            raise MediaError(
                f"IMU CSV data row {line} has {len(row)} columns; expected {IMU_CHANNELS} "
                f"({', '.join(IMU_CHANNEL_NAMES)})"
            )
        for column, cell in enumerate(row):
            try:
                values[line - 1, column] = float(cell)
            except ValueError:
                raise MediaError(
                    f"IMU CSV data row {line}, column {column + 1}: {cell!r} is not a number"
                ) from None
    return values.T


def parse_imu_npy(data: bytes, max_samples: int | None = None) -> np.ndarray:
    """``.npy`` bytes → float64 (6, T); with ``max_samples``, T is at most that."""
    check_npy_size(data)
    try:
        array = np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        raise MediaError(f"not a readable .npy array ({err})") from None
    if array.dtype.kind not in "iuf" or array.ndim != 2:
        raise MediaError(
            f"IMU array must be 2-D numbers of shape (6, T) or (T, 6), got {array.dtype} "
            f"{tuple(array.shape)}"
        )
    if array.shape[0] != IMU_CHANNELS and array.shape[1] == IMU_CHANNELS:
        array = array.T
    if array.shape[0] != IMU_CHANNELS:
        raise MediaError(
            f"IMU array has shape {tuple(array.shape)}; expected (6, T) or (T, 6) with "
            f"channels {', '.join(IMU_CHANNEL_NAMES)}"
        )
    if array.shape[1] == 0:
        raise MediaError("IMU array has no samples")
    return array[:, :max_samples].astype(np.float64)


def check_npy_size(data: bytes) -> None:
    """MediaError unless the ``.npy`` header's shape and type fit in the bytes that follow it.

    ``np.load`` allocates what the header claims before it reads: a 100-byte
    file may claim a terabyte.
    """
    stream = io.BytesIO(data)
    try:
        version = np.lib.format.read_magic(stream)
        read_header = (
            np.lib.format.read_array_header_1_0
            if version == (1, 0)
            else np.lib.format.read_array_header_2_0
        )
        shape, _, dtype = read_header(stream)
    except (ValueError, OSError, EOFError, SyntaxError, TypeError) as err:
        raise MediaError(f"not a readable .npy array ({err})") from None
    claimed = math.prod(shape) * dtype.itemsize
    present = len(data) - stream.tell()
    if claimed > present:
        raise MediaError(
            f".npy header claims {shape} {dtype} ({claimed:,} bytes); the file holds {present:,}"
        )


def imu_cost(data: bytes) -> ItemCost:
    """What :func:`load_imu` will take: about three times the file (its text, then rows)."""
    if not data:
        raise MediaError("IMU file is empty (0 bytes)")
    if data.startswith(_NPY_MAGIC):
        check_npy_size(data)
        return ItemCost(3 * len(data), "a .npy IMU array")
    return ItemCost(3 * len(data), "an IMU CSV")


def fit_length(channels: np.ndarray, samples: int = IMAGEBIND_HUGE.imu_samples) -> np.ndarray:
    """Zero-pad or cut the time axis on the right to ``samples``."""
    fitted = np.zeros((channels.shape[0], samples), dtype=np.float32)
    keep = min(samples, channels.shape[1])
    fitted[:, :keep] = channels[:, :keep]
    return fitted


def load_imu(data: bytes, samples: int = IMAGEBIND_HUGE.imu_samples) -> torch.Tensor:
    """CSV or .npy bytes → float32 (6, samples)."""
    if not data:
        raise MediaError("IMU file is empty (0 bytes)")
    if data.startswith(_NPY_MAGIC):
        channels = parse_imu_npy(data, samples)
    else:
        channels = parse_imu_csv(data, samples)
    _refuse_non_finite(channels, channels, "NaN or infinite values")
    with np.errstate(over="ignore"):
        fitted = fit_length(channels, samples)
    _refuse_non_finite(fitted, channels, "values too large for float32", show_value=True)
    return torch.from_numpy(fitted)


def _refuse_non_finite(
    checked: np.ndarray, read: np.ndarray, what: str, show_value: bool = False
) -> None:
    """MediaError naming the first sample and channel where ``checked`` is not finite."""
    bad = ~np.isfinite(checked)
    if bad.any():
        channel, sample = np.argwhere(bad)[0]
        value = f": {read[channel, sample]:g}" if show_value else ""
        raise MediaError(
            f"IMU data has {what} (first at sample {sample + 1}, "
            f"channel {IMU_CHANNEL_NAMES[channel]}{value})"
        )
