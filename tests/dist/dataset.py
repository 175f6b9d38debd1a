"""A dataset of every modality for the distributed runs: hundreds of small files, a few corrupt.

Photos are phone-sized (2-4 megapixels), so decoding them keeps the workers
busy long enough to lose one mid-job; the other media come from the fixture's
inputs. Every file has its own bytes (a JPEG comment, a WAV's extra chunk,
IMU rows perturbed, captions numbered), so each object has its own content
hash.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from benchmarks.scale_dataset import photo, with_jpeg_comment

from ..fixture_data import INPUTS

# modality folder → (share of the objects, fixture files used in turn)
MIX = {
    "image": (0.30, ()),  # photos made here
    "text": (0.20, ()),
    "imu": (0.15, ("imu_2000.csv", "imu_1500.csv")),
    "depth": (0.10, ("depth_a.png", "depth_b.jpg")),
    "thermal": (0.10, ("thermal_a.jpg", "thermal_b.png")),
    "audio": (0.10, ("tone_16k_mono.wav", "short_8k_mono.wav")),
    "video": (0.05, ("video_a.mp4", "video_portrait.mp4")),
}
PHOTO_POOL = 6
CORRUPT = (  # (folder, suffix, bytes): each decoder must refuse its own kind
    ("image", "jpg", b"\xff\xd8\xff\xe0 not a jpeg at all" * 50),
    ("audio", "wav", b""),
    ("video", "mp4", bytes(range(256)) * 40),
    ("text", "txt", b"caption \xff\xfe\xfa not utf-8"),
    ("imu", "csv", b"gyro_x,gyro_y,gyro_z,accl_x,accl_y,accl_z\nup,down,left,a,b,c\n"),
    ("depth", "png", b"\x89PNG\r\n\x1a\n truncated"),
)


@dataclass
class DistDataset:
    root: Path
    counts: dict[str, int] = field(default_factory=dict)  # valid files per folder
    corrupt: list[str] = field(default_factory=list)  # relative paths that must be dead letters

    @property
    def valid(self) -> int:
        return sum(self.counts.values())


def write_dataset(root: Path, objects: int = 600, seed: int = 0) -> DistDataset:
    """``objects`` valid files under ``root/<modality>/`` plus :data:`CORRUPT`."""
    rng = np.random.default_rng(seed)
    photos = [photo(rng, megapixels) for megapixels in np.linspace(2.0, 4.0, PHOTO_POOL)]
    dataset = DistDataset(root)
    for folder, (share, fixtures) in MIX.items():
        count = max(1, round(objects * share))
        (root / folder).mkdir(parents=True, exist_ok=True)
        for index in range(count):
            name = f"{folder}-{index:04d}"
            if folder == "text":
                path = root / folder / f"{name}.txt"
                path.write_text(
                    f"caption {index}: a {rng.choice(WORDS)} near a {rng.choice(WORDS)}"
                )
                continue
            if folder == "image":
                path = root / folder / f"{name}.jpg"
                path.write_bytes(with_jpeg_comment(photos[index % len(photos)], name))
                continue
            source = INPUTS / fixtures[index % len(fixtures)]
            path = root / folder / f"{name}{source.suffix}"
            path.write_bytes(unique_bytes(source, name, rng))
        dataset.counts[folder] = count
    for number, (folder, suffix, data) in enumerate(CORRUPT):
        relative = f"{folder}/corrupt-{number}.{suffix}"
        (root / relative).write_bytes(data)
        dataset.corrupt.append(relative)
    return dataset


def unique_bytes(source: Path, tag: str, rng: np.random.Generator) -> bytes:
    """The fixture file changed so no two copies are byte-equal, decoding as before."""
    data = source.read_bytes()
    if source.suffix == ".jpg":
        return with_jpeg_comment(data, tag)
    if source.suffix == ".wav":  # an unknown RIFF chunk, which decoders skip
        payload = tag.encode().ljust(16, b" ")
        chunk = b"note" + struct.pack("<I", len(payload)) + payload
        riff = data[:12] + chunk + data[12:]
        return riff[:4] + struct.pack("<I", len(riff) - 8) + riff[8:]
    if source.suffix == ".csv":
        rows = np.loadtxt(source, delimiter=",", skiprows=1)
        rows = rows + rng.normal(0, 0.01, rows.shape)
        header = data.split(b"\n", 1)[0].decode()
        lines = "\n".join(",".join(f"{v:.6f}" for v in row) for row in rows)
        return f"{header}\n{lines}\n".encode()
    if source.suffix == ".png":  # a tEXt chunk before IEND
        import zlib

        body = b"tEXt" + b"Comment\x00" + tag.encode()
        chunk = struct.pack(">I", len(body) - 4) + body + struct.pack(">I", zlib.crc32(body))
        return data[:-12] + chunk + data[-12:]
    return data  # mp4: copies are byte-equal; their paths (the ids) differ


WORDS = ("dog", "cat", "river", "train", "bird", "guitar", "beach", "forest", "car", "drum")
