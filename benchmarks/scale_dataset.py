"""A mixed dataset the size users have, written to disk for the scale benchmark.

    write_dataset(root, objects=100_000) -> DatasetPlan

Of N objects, about 55% are photos (0.3 to 12 megapixels, log-uniform: a
phone's full-size shots and the thumbnails and screenshots around them), 20%
captions, 15% IMU logs (5 s at 400 Hz), 5% audio recordings (5 s to 10 min,
log-uniform; AAC 48 kHz mono like a phone's voice memos, MP3 44.1 kHz stereo,
WAV 16 kHz mono), 3% videos (10 s to 5 min, log-uniform; 320x240 H.264 at
30 fps, 250 kbit/s) and 1% corrupt
files that every decoder must refuse (random bytes, a truncated JPEG or WAV,
an empty file, text that is not UTF-8, an IMU log with words for numbers).

Encoding a million seconds of media would take longer than ingesting it, so
media are made from a pool of encoded originals per modality, each spread over
its size range, and every file is made unique without re-encoding: a JPEG gets
its own comment segment, audio and video are remuxed with their own metadata
tag. Files cost what their size costs to decode, and no two are byte-equal.
The plan (counts, sizes, the corrupt ids) is saved as ``.dataset.json``; a
root that already holds the same plan is reused.
"""

from __future__ import annotations

import io
import json
import logging
import math
import struct
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

log = logging.getLogger("benchmarks.scale_dataset")

MIX = {"image": 0.56, "text": 0.20, "imu": 0.15, "audio": 0.05, "video": 0.03}
CORRUPT_SHARE = 0.01
PHOTO_MEGAPIXELS = (0.3, 12.0)
AUDIO_SECONDS = (5.0, 600.0)
VIDEO_SECONDS = (10.0, 300.0)
FILES_PER_FOLDER = 1000  # like a camera roll's day folders, modalities mixed
POOL = {"image": 64, "audio": 18, "video": 10}  # encoded originals per modality
AUDIO_FORMATS = (("m4a", 48_000, 1), ("mp3", 44_100, 2), ("m4a", 48_000, 1), ("wav", 16_000, 1))
PLAN_FILE = ".dataset.json"  # hidden: ib-ingest skips it


@dataclass
class DatasetPlan:
    """What was written: the objects per modality, the corrupt ids, and the sizes."""

    objects: int
    seed: int
    counts: dict[str, int] = field(default_factory=dict)  # valid objects per modality
    corrupt: list[str] = field(default_factory=list)  # source ids that must be dead letters
    bytes_on_disk: int = 0
    media_seconds: dict[str, float] = field(default_factory=dict)  # audio/video totals

    @property
    def valid(self) -> int:
        return self.objects - len(self.corrupt)


def split_counts(objects: int) -> tuple[dict[str, int], int]:
    """Objects per modality and the number of corrupt files, summing to ``objects``."""
    corrupt = max(1, round(objects * CORRUPT_SHARE)) if objects >= 20 else 0
    counts = {name: int(objects * share) for name, share in MIX.items()}
    counts["image"] += objects - corrupt - sum(counts.values())
    return counts, corrupt


def write_dataset(root: Path, objects: int, seed: int = 0) -> DatasetPlan:
    """Write (or reuse) the mixed dataset of ``objects`` files under ``root``."""
    root = Path(root)
    plan_path = root / PLAN_FILE
    if plan_path.exists():
        saved = json.loads(plan_path.read_text())
        if saved.get("objects") == objects and saved.get("seed") == seed:
            log.info("reusing the dataset in %s", root)
            return DatasetPlan(**saved)
        raise ValueError(
            f"{root} holds another dataset ({saved.get('objects')} objects, seed "
            f"{saved.get('seed')}); remove it or choose another --dataset"
        )
    root.mkdir(parents=True, exist_ok=True)
    counts, corrupt = split_counts(objects)
    plan = DatasetPlan(objects=objects, seed=seed, counts=dict(counts))
    rng = np.random.default_rng(seed)
    writer = _Writer(root, plan, rng.permutation(objects))
    for modality, count in counts.items():
        log.info("writing %d %s files", count, modality)
        make = {
            "image": _photos,
            "text": _texts,
            "imu": _imu_logs,
            "audio": _recordings,
            "video": _videos,
        }[modality]
        for suffix, data in make(rng, count):
            writer.write(suffix, data)
    for suffix, data in _corrupt_files(rng, corrupt):
        plan.corrupt.append(writer.write(suffix, data))
    plan_path.write_text(json.dumps(asdict(plan), indent=1))
    log.info("dataset: %d files, %.1f GB in %s", objects, plan.bytes_on_disk / 1e9, root)
    return plan


class _Writer:
    """Files named by a shuffled position, so every folder mixes modalities like a camera roll.

    The extension tells ``ib-ingest`` the modality; the order in which a runner
    lists the files is then a mix, as it is for users.
    """

    def __init__(self, root: Path, plan: DatasetPlan, positions: np.ndarray) -> None:
        self.root = root
        self.plan = plan
        self.positions = iter(positions.tolist())

    def write(self, suffix: str, data: bytes) -> str:
        position = next(self.positions)
        source_id = f"{position // FILES_PER_FOLDER:04d}/{position:07d}.{suffix}"
        path = self.root / source_id
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        self.plan.bytes_on_disk += len(data)
        return source_id


def _log_uniform(rng: np.random.Generator, low: float, high: float, count: int) -> np.ndarray:
    return np.exp(rng.uniform(math.log(low), math.log(high), count))


# -- photos --------------------------------------------------------------------------------------


def photo(rng: np.random.Generator, megapixels: float) -> bytes:
    """A 4:3 JPEG of about ``megapixels``, with little noise and quality 85.

    About 0.15 bytes per pixel on average, so 100,000 of them fit on a
    workstation's disk; decoding costs what a photo of that size costs.
    """
    from ib_vectorizer.bench.payloads import image_payload

    width = int(math.sqrt(megapixels * 1e6 * 4 / 3)) // 8 * 8
    return image_payload(rng, (width, width * 3 // 4), noise=6.0, quality=85)


def with_jpeg_comment(jpeg: bytes, comment: str) -> bytes:
    """``jpeg`` with a COM segment after its SOI marker: other bytes, the same pixels."""
    payload = comment.encode("ascii")
    return jpeg[:2] + b"\xff\xfe" + struct.pack(">H", len(payload) + 2) + payload + jpeg[2:]


def _photos(rng: np.random.Generator, count: int) -> Iterator[tuple[str, bytes]]:
    sizes = _log_uniform(rng, *PHOTO_MEGAPIXELS, min(count, POOL["image"]))
    pool = [photo(rng, mp) for mp in sizes]
    for index in range(count):
        yield "jpg", with_jpeg_comment(pool[index % len(pool)], f"ib-bench {index}")


# -- texts and IMU -------------------------------------------------------------------------------


def _texts(rng: np.random.Generator, count: int) -> Iterator[tuple[str, bytes]]:
    from ib_vectorizer.bench.payloads import text_payload

    for index in range(count):
        yield "txt", f"{text_payload(rng)} (frame {index})".encode()


def _imu_logs(rng: np.random.Generator, count: int) -> Iterator[tuple[str, bytes]]:
    from ib_vectorizer.bench.payloads import imu_payload

    pool = [imu_payload(rng) for _ in range(min(count, 32))]
    for index in range(count):
        extra = f"{index % 7 * 0.001:.5f},0,0,0,0,9.81000\n".encode()  # one more sample
        yield "csv", pool[index % len(pool)] + extra


# -- audio and video -----------------------------------------------------------------------------


def recording(rng: np.random.Generator, seconds: float, kind: tuple[str, int, int]) -> bytes:
    """``seconds`` of tones drifting under noise, encoded as WAV, MP3 or AAC (M4A)."""
    import av

    container, rate, channels = kind
    codec = {"wav": "pcm_s16le", "mp3": "libmp3lame", "m4a": "aac"}[container]
    layout = "stereo" if channels == 2 else "mono"
    buffer = io.BytesIO()
    chunk = rate  # one second per frame keeps memory flat for 10-minute files
    freqs = rng.uniform(100, 3000, 3)
    with av.open(buffer, "w", format={"m4a": "mp4"}.get(container, container)) as out:
        stream = out.add_stream(codec, rate=rate, layout=layout)
        if codec != "pcm_s16le":
            stream.bit_rate = 48_000 * channels
        sample_format = stream.codec_context.format.name
        total = int(seconds * rate)
        for first in range(0, total, chunk):
            t = np.arange(first, min(first + chunk, total)) / rate
            drift = 1.0 + 0.1 * np.sin(2 * np.pi * t / 30.0)
            sound = sum(0.2 * np.sin(2 * np.pi * f * drift * t) for f in freqs)
            sound = (sound + rng.normal(0.0, 0.05, t.shape)).astype(np.float32)
            array = _as_samples(np.tile(sound, (channels, 1)), sample_format)
            frame = av.AudioFrame.from_ndarray(array, format=sample_format, layout=layout)
            frame.sample_rate = rate
            frame.pts = first
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return buffer.getvalue()


def _as_samples(planes: np.ndarray, sample_format: str) -> np.ndarray:
    """Float (channels, samples) in [-1, 1] as the encoder's sample format wants them."""
    kind = sample_format.rstrip("p")
    scale, dtype = {"s16": (32767, np.int16), "s32": (2**31 - 1, np.int32)}.get(
        kind, (1, np.float32)
    )
    array = (np.clip(planes, -1, 1) * scale).astype(dtype)
    return array if sample_format.endswith("p") else array.T.reshape(1, -1)


def clip(rng: np.random.Generator, seconds: float) -> bytes:
    """A 320x240 H.264 MP4 of ``seconds`` at 30 fps and 250 kbit/s (see ``video_payload``)."""
    from ib_vectorizer.bench.payloads import video_payload

    return video_payload(rng, seconds=max(1, round(seconds)), bit_rate=250_000)


def remux_with_tag(data: bytes, container: str, tag: str) -> bytes:
    """``data`` remuxed (no re-encoding) with a ``comment`` metadata tag: unique bytes."""
    import av

    buffer = io.BytesIO()
    with av.open(io.BytesIO(data)) as source, av.open(buffer, "w", format=container) as out:
        out.metadata["comment"] = tag
        streams = {s.index: out.add_stream_from_template(s) for s in source.streams}
        for packet in source.demux():
            if packet.dts is None:  # the demuxer's end-of-stream marker
                continue
            packet.stream = streams[packet.stream.index]
            out.mux(packet)
    return buffer.getvalue()


def _recordings(rng: np.random.Generator, count: int) -> Iterator[tuple[str, bytes]]:
    pool_size = min(count, POOL["audio"])
    lengths = _log_uniform(rng, *AUDIO_SECONDS, pool_size)
    kinds = [AUDIO_FORMATS[i % len(AUDIO_FORMATS)] for i in range(pool_size)]
    pool = [recording(rng, s, kind) for s, kind in zip(lengths, kinds, strict=True)]
    for index in range(count):
        (container, _, _), data = kinds[index % pool_size], pool[index % pool_size]
        muxer = {"m4a": "mp4"}.get(container, container)
        yield container, remux_with_tag(data, muxer, f"ib-bench {index}")


def _videos(rng: np.random.Generator, count: int) -> Iterator[tuple[str, bytes]]:
    pool_size = min(count, POOL["video"])
    pool = [clip(rng, s) for s in _log_uniform(rng, *VIDEO_SECONDS, pool_size)]
    for index in range(count):
        yield "mp4", remux_with_tag(pool[index % pool_size], "mp4", f"ib-bench {index}")


# -- corrupt files -------------------------------------------------------------------------------


def _corrupt_files(rng: np.random.Generator, count: int) -> Iterator[tuple[str, bytes]]:
    """(suffix, bytes) of files that no decoder accepts, seven kinds in turn."""
    jpeg = photo(rng, 0.3)
    wav = recording(rng, 5.0, AUDIO_FORMATS[-1])
    kinds = [
        ("image", "jpg", lambda: rng.bytes(20_000)),
        ("image", "jpg", lambda: jpeg[: len(jpeg) * 2 // 5]),
        ("audio", "wav", lambda: b""),
        ("audio", "wav", lambda: wav[: len(wav) // 2]),
        ("video", "mp4", lambda: rng.bytes(50_000)),
        ("text", "txt", lambda: b"caption \xff\xfe\xfa not utf-8"),
        ("imu", "csv", lambda: b"gyro_x,gyro_y,gyro_z,accl_x,accl_y,accl_z\nup,down,left,a,b,c\n"),
    ]
    for index in range(count):
        _, suffix, make = kinds[index % len(kinds)]
        yield suffix, make()


def write_long_recording(path: Path, minutes: float, rate: int = 48_000) -> None:
    """A stereo 16-bit WAV of ``minutes`` (quiet noise), written a second at a time."""
    import wave

    rng = np.random.default_rng(1)
    with wave.open(str(path), "wb") as out:
        out.setnchannels(2)
        out.setsampwidth(2)
        out.setframerate(rate)
        for _ in range(round(minutes * 60)):
            out.writeframes(rng.integers(-8000, 8000, (rate, 2), dtype=np.int16).tobytes())
