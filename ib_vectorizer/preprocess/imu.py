"""IMU recordings → (6, N): six channels of N = ``imu_samples`` samples (2000: 5 s at 400 Hz).

Accepted layouts (the format is told by the bytes, not a file name):

* CSV, one row per sample and one column per channel, in the order
  gyro_x, gyro_y, gyro_z, accl_x, accl_y, accl_z (Ego4D's). A first row with
  any non-numeric cell is a header and is skipped; other rows must be numbers.
  The (T, 6) table is **transposed** to (6, T) (the Weaviate reference
  container reshapes instead, which scrambles the channels).
* NumPy ``.npy`` of shape (6, T), or (T, 6) which is transposed.

T shorter than N is zero-padded on the right, longer is cut. NaN or infinite
values are rejected: they would poison the whole embedding.
"""

from __future__ import annotations

import csv
import io
import warnings

import numpy as np
import torch

from ..errors import MediaError
from .config import IMAGEBIND_HUGE, IMU_CHANNEL_NAMES, IMU_CHANNELS

_NPY_MAGIC = b"\x93NUMPY"


def _is_number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True


def parse_imu_csv(data: bytes) -> np.ndarray:
    """CSV bytes → float64 (6, T)."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise MediaError("IMU data is neither a UTF-8 CSV nor a .npy array") from None
    plain = _parse_plain_csv(text)
    return plain if plain is not None else _parse_csv_carefully(text)


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
    rows = [row for row in csv.reader(io.StringIO(text)) if any(cell.strip() for cell in row)]
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


def parse_imu_npy(data: bytes) -> np.ndarray:
    """``.npy`` bytes → float64 (6, T)."""
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
    return array.astype(np.float64)


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
    channels = parse_imu_npy(data) if data.startswith(_NPY_MAGIC) else parse_imu_csv(data)
    bad = ~np.isfinite(channels)
    if bad.any():
        channel, sample = np.argwhere(bad)[0]
        raise MediaError(
            f"IMU data has NaN or infinite values (first at sample {sample + 1}, "
            f"channel {IMU_CHANNEL_NAMES[channel]})"
        )
    return torch.from_numpy(fit_length(channels, samples))
