"""What the costliest items of each modality take to decode: the estimate against the truth.

    python -m tests.item_costs [--only NAME ...]

makes each item (deterministic, in memory), then decodes it in a fresh
process with ``Preprocessor.load_item`` and prints, per item, the memory its
header made us expect (``Preprocessor.inspect``), the peak memory the
process really took above where it stood (its resident-set high-water mark,
after decoding a small item of the same modality first), and the time. The
items sit at or near the limits of ``docs/limits-and-hostile-input.md``.
"""

from __future__ import annotations

import argparse
import io
import json
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from .fixture_data import INPUTS
from .hostile import png, wav
from .media import encode_audio, encode_video, tone

MiB = 1 << 20
WARM_UP = {
    "vision": "image_rgb.jpg",
    "audio": "tone_16k_mono.wav",
    "video": "video_a.mp4",
    "depth": "depth_a.png",
    "thermal": "thermal_b.png",
    "imu": "imu_1500.csv",
}


def _noise(width: int, height: int, channels: int = 3, dtype=np.uint8, high: int = 255):
    block = np.random.default_rng(0).integers(0, high, (256, 256, channels), dtype=dtype)
    tiles = np.tile(block, (-(-height // 256), -(-width // 256), 1))[:height, :width]
    return tiles[:, :, 0] if channels == 1 else tiles


def _pillow(array: np.ndarray, fmt: str, **options) -> bytes:
    out = io.BytesIO()
    Image.fromarray(array).save(out, format=fmt, **options)
    return out.getvalue()


def _video(width: int, height: int, frames: int, fps: int) -> bytes:
    base = _noise(width, height)
    moving = (np.roll(base, 8 * index, axis=1) for index in range(frames))
    return encode_video(moving, fps, options={"preset": "ultrafast", "crf": "23"})


def _stereo_wav(seconds: float, rate: int) -> bytes:
    return wav(np.round(tone([440.0, 660.0], seconds, rate) * 32767).astype(np.int16), rate)


# name → (modality, how to make it)
ITEMS: dict[str, tuple[str, Callable[[], bytes]]] = {
    "JPEG 4000x3000 (12 MP photo)": ("vision", lambda: _pillow(_noise(4000, 3000), "JPEG")),
    "progressive JPEG 4000x3000": (
        "vision",
        lambda: _pillow(_noise(4000, 3000), "JPEG", progressive=True),
    ),
    "PNG 13000x13000 grey (169 MP)": ("vision", lambda: png(13_000, 13_000)),
    "WebP 7500x7500 (56 MP)": ("vision", lambda: _pillow(_noise(7500, 7500), "WEBP", method=0)),
    "thermal PNG 9000x9000, 16-bit": ("thermal", lambda: png(9000, 9000, bits=16)),
    "depth TIFF 8000x8000, float": (
        "depth",
        lambda: _pillow(_noise(8000, 8000, 1).astype(np.float32), "TIFF"),
    ),
    "WAV 10 min, 48 kHz stereo": ("audio", lambda: _stereo_wav(600, 48_000)),
    "FLAC 10 min, 96 kHz stereo": (
        "audio",
        lambda: encode_audio(np.zeros((2, 96_000 * 600)), 96_000, "flac", "flac"),
    ),
    "WAV 30 s, 44056 Hz stereo (the largest filter)": ("audio", lambda: _stereo_wav(30, 44_056)),
    "H.264 1920x1080, 10 s": ("video", lambda: _video(1920, 1080, 300, 30)),
    "H.264 3840x2160, 12 s": ("video", lambda: _video(3840, 2160, 48, 4)),
    "H.264 7680x4320, 12 s": ("video", lambda: _video(7680, 4320, 24, 2)),
    "IMU CSV of 2 million rows": (
        "imu",
        lambda: (
            b"gyro_x,gyro_y,gyro_z,accl_x,accl_y,accl_z\n"
            + b"0.1,0.2,0.3,0.4,0.5,0.6\n" * 2_000_000
        ),
    ),
    "text: one 2048-letter word": (
        "text",
        lambda: "".join(np.random.default_rng(0).choice(list("abcdefghij"), 2048)).encode(),
    ),
}


def _memory(key: str) -> int:
    """VmRSS or VmHWM of this process, in bytes."""
    status = Path("/proc/self/status").read_text()
    return int(re.search(rf"{key}:\s+(\d+) kB", status).group(1)) * 1024


def measure(name: str, path: Path) -> dict:
    """In this (fresh) process: warm the modality up, decode the item at ``path``, measure.

    The kernel's high-water mark of the resident set is reset just before the
    decode (``/proc/self/clear_refs``), so the peak is the decode's alone.
    """
    from ib_vectorizer.errors import InputError
    from ib_vectorizer.preprocess import Preprocessor

    modality = ITEMS[name][0]
    data = path.read_bytes()
    preprocessor = Preprocessor()
    warm_up = (INPUTS / WARM_UP[modality]).read_bytes() if modality in WARM_UP else "warm up"
    preprocessor.load_item(modality, warm_up)
    unlimited = Preprocessor(max_item_bytes=1 << 40)
    estimate = unlimited.inspect(modality, data)
    outcome = "accepted"
    try:
        preprocessor.inspect(modality, data)
    except InputError as err:
        outcome = f"refused: {err.reason}"
    Path("/proc/self/clear_refs").write_text("5")
    before = _memory("VmRSS")
    started = time.perf_counter()
    unlimited.load_item(modality, data)
    seconds = time.perf_counter() - started
    return {
        "name": name,
        "bytes": len(data),
        "estimate_mib": estimate.bytes / MiB,
        "peak_mib": (_memory("VmHWM") - before) / MiB,
        "seconds": seconds,
        "outcome": outcome,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.item_costs", description=__doc__)
    parser.add_argument("--only", nargs="*", help="names (or parts of names) to measure")
    parser.add_argument("--one", nargs=2, help=argparse.SUPPRESS)  # in the child: NAME FILE
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(measure(args.one[0], Path(args.one[1]))))
        return 0
    names = [n for n in ITEMS if not args.only or any(part in n for part in args.only)]
    print("| item | file | estimate (MiB) | peak (MiB) | decode time (s) | with the defaults |")
    print("|---|---:|---:|---:|---:|---|")
    for name in names:
        with tempfile.NamedTemporaryFile(prefix="item-") as item:
            item.write(ITEMS[name][1]())
            item.flush()
            child = subprocess.run(
                [sys.executable, "-m", "tests.item_costs", "--one", name, item.name],
                capture_output=True,
                text=True,
                check=True,
            )
        row = json.loads(child.stdout.strip().splitlines()[-1])
        print(
            f"| {row['name']} | {row['bytes'] / MiB:,.1f} MiB | {row['estimate_mib']:,.0f} "
            f"| {row['peak_mib']:,.0f} | {row['seconds']:.2f} | {row['outcome']} |",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
