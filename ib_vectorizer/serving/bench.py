"""``ib-vectorizer bench``: throughput and latency under Weaviate's traffic pattern.

Weaviate's ``multi2vec-bind`` module sends one object per request from many
concurrent import workers, so what matters is a closed loop of N clients that
each send ONE item, wait for the answer and send the next, not big client-side
batches. By default the command starts the server twice on this machine, batched
and then baseline (one request at a time, like the reference container), with the
same settings, so the speedup it prints compares like with like.

Heavy modules (numpy, PIL, PyAV, aiohttp, torch) are imported where they are
used, so registering the subcommand keeps ``ib-vectorizer --help`` fast.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import dataclasses
import io
import json
import math
import os
import platform
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..modalities import Modality
from .protocol import RESPONSE_KEYS, WIRE_NAME

if TYPE_CHECKING:
    import aiohttp
    import numpy as np

EXIT_FAILED = 1
POOL_SIZE = 8  # distinct payloads per modality, so a server cannot answer from a cache
ERROR_SAMPLES = 5  # error bodies kept (and printed) per run
READY_PATH = "/.well-known/ready"
REFUSED_GRACE_S = 30.0  # how long a --url server may still be starting up before we give up


class BenchError(Exception):
    """A failure that ends the benchmark with a message instead of a traceback."""


# --------------------------------------------------------------------------- modalities


@dataclass(frozen=True)
class Kind:
    """How one modality travels in the ``multi2vec-bind`` protocol."""

    request_key: str
    response_key: str
    modality: Modality


# Mix names: the user-facing modality names, "image" for vision.
KINDS: dict[str, Kind] = {
    ("image" if modality is Modality.VISION else modality.value): Kind(
        WIRE_NAME[modality], RESPONSE_KEYS[modality], modality
    )
    for modality in (Modality.VISION, Modality.TEXT, Modality.AUDIO, Modality.VIDEO,
                     Modality.DEPTH, Modality.THERMAL, Modality.IMU)
}  # fmt: skip
ALIASES = {"vision": "image", "images": "image", "texts": "text"}


# --------------------------------------------------------------------------- mix


def parse_mix(text: str) -> dict[str, float]:
    """``"audio=1,text=2"`` → ``{"audio": 1.0, "text": 2.0}``; a bare name weighs 1.

    Zero weights are dropped; the weights need not sum to 1.
    """
    mix: dict[str, float] = {}
    for part in text.split(","):
        name, _, weight_text = part.strip().partition("=")
        name = ALIASES.get(name.strip().lower(), name.strip().lower())
        if name not in KINDS:
            raise ValueError(f"unknown modality {name!r} in mix {text!r}; use {', '.join(KINDS)}")
        if name in mix:
            raise ValueError(f"modality {name!r} appears twice in mix {text!r}")
        try:
            weight = float(weight_text) if weight_text.strip() else 1.0
        except ValueError:
            raise ValueError(f"weight {weight_text!r} of {name!r} is not a number") from None
        if not math.isfinite(weight) or weight < 0:
            raise ValueError(f"weight of {name!r} must be a finite number >= 0, not {weight_text}")
        mix[name] = weight
    mix = {name: weight for name, weight in mix.items() if weight > 0}
    if not mix:
        raise ValueError(f"mix {text!r} has no modality with a positive weight")
    return mix


def mix_name(mix: dict[str, float]) -> str:
    """The canonical spelling of a mix, used as the scenario's name."""
    return ",".join(f"{name}={weight:g}" for name, weight in mix.items())


def _mix_arg(text: str) -> dict[str, float]:
    try:
        return parse_mix(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


# --------------------------------------------------------------------------- payloads


def image_payload(rng: np.random.Generator) -> bytes:
    """A 640x480 JPEG: a coloured gradient under noise, as costly to decode as a photo."""
    import numpy as np
    from PIL import Image

    height, width = 480, 640
    ys = np.linspace(0.0, 1.0, height)[:, None]
    xs = np.linspace(0.0, 1.0, width)[None, :]
    channels = []
    for _ in range(3):
        a, b, phase = rng.uniform(0.5, 4.0), rng.uniform(0.5, 4.0), rng.uniform(0, 2 * np.pi)
        channels.append(127.5 + 100.0 * np.sin(2 * np.pi * (a * xs + b * ys) + phase))
    image = np.stack(channels, axis=-1) + rng.normal(0.0, 20.0, (height, width, 3))
    buffer = io.BytesIO()
    Image.fromarray(np.clip(image, 0, 255).astype(np.uint8), "RGB").save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


_SUBJECTS = ("a dog", "two cats", "an old man", "a red car", "a small bird", "the crowd", "a child")
_VERBS = ("runs across", "sleeps on", "looks at", "waits near", "jumps over", "sings in")
_PLACES = ("the beach", "a busy street", "the kitchen table", "a snowy field", "the stage")
_TIMES = ("at sunset", "in the rain", "at night", "on a sunny morning", "during a storm")


def text_payload(rng: np.random.Generator) -> str:
    """A short caption, like the text properties Weaviate vectorises."""
    words = (_SUBJECTS, _VERBS, _PLACES, _TIMES)
    return " ".join(str(choices[rng.integers(len(choices))]) for choices in words).capitalize()


def audio_payload(rng: np.random.Generator, seconds: float = 5.0, rate: int = 16_000) -> bytes:
    """A 5 s 16 kHz mono 16-bit WAV: a few tones and some noise."""
    import wave

    import numpy as np

    t = np.arange(round(seconds * rate)) / rate
    signal_ = sum(0.2 * np.sin(2 * np.pi * rng.uniform(100, 3000) * t) for _ in range(3))
    signal_ = signal_ + rng.normal(0.0, 0.05, t.shape)
    samples = np.clip(np.round(signal_ * 32767), -32768, 32767).astype("<i2")
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(samples.tobytes())
    return buffer.getvalue()


def video_codec() -> str:
    """The first of H.264 and MPEG-4 part 2 that this PyAV build can encode."""
    import av

    for name in ("libx264", "h264", "mpeg4"):
        try:
            av.codec.Codec(name, "w")
        except Exception:  # PyAV raises UnknownCodecError or ValueError, by version
            continue
        return name
    raise BenchError("PyAV can encode neither H.264 nor MPEG-4; cannot make video payloads")


def video_payload(
    rng: np.random.Generator, seconds: int = 3, fps: int = 30, size: tuple[int, int] = (320, 240)
) -> bytes:
    """A 3 s 320x240 MP4: a gradient that scrolls, with a square moving over it."""
    import av
    import numpy as np

    width, height = size
    codec = video_codec()
    # x264's macroblock tree made this build's output differ run to run: off, for seeded bytes.
    options = {"preset": "veryfast", "threads": "1", "x264-params": "mbtree=0"}
    if codec == "mpeg4":
        options = {"qscale": "3", "threads": "1"}
    xs = np.arange(width)[None, :]
    ys = np.arange(height)[:, None]
    colour = rng.integers(40, 220, 3)
    speed = rng.uniform(1.0, 6.0)
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="mp4") as out:
        stream = out.add_stream(codec, rate=fps, options=options)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for index in range(seconds * fps):
            shift = speed * index
            plane = (xs + ys + shift) % 256
            image = np.stack([plane, (plane + 85) % 256, (plane + 170) % 256], axis=-1)
            x0 = int(shift * 2) % (width - 48)
            image[40:88, x0 : x0 + 48] = colour
            frame = av.VideoFrame.from_ndarray(image.astype(np.uint8), format="rgb24")
            frame.pts = index
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return buffer.getvalue()


def grayscale_payload(rng: np.random.Generator, size: tuple[int, int] = (320, 240)) -> bytes:
    """A 320x240 8-bit grayscale PNG, smooth like a depth or thermal map, plus sensor noise."""
    import numpy as np
    from PIL import Image

    width, height = size
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float64)
    cx, cy = rng.uniform(0, width), rng.uniform(0, height)
    radius = np.hypot(xs - cx, ys - cy) / np.hypot(width, height)
    image = 255.0 * (1.0 - radius) + rng.normal(0.0, 6.0, (height, width))
    buffer = io.BytesIO()
    Image.fromarray(np.clip(image, 0, 255).astype(np.uint8), "L").save(buffer, "PNG")
    return buffer.getvalue()


IMU_HEADER = "gyro_x,gyro_y,gyro_z,accl_x,accl_y,accl_z"


def imu_payload(rng: np.random.Generator, rows: int = 2000) -> bytes:
    """A 2000-row CSV of six IMU channels (5 s at 400 Hz), with Ego4D's header."""
    import numpy as np

    t = np.arange(rows) / 400.0
    gyro = [0.5 * np.sin(2 * np.pi * rng.uniform(0.2, 3.0) * t) for _ in range(3)]
    accl = [np.sin(2 * np.pi * rng.uniform(0.2, 3.0) * t) for _ in range(3)]
    accl[2] = accl[2] + 9.81
    table = np.stack(gyro + accl, axis=1) + rng.normal(0.0, 0.02, (rows, 6))
    buffer = io.StringIO()
    np.savetxt(buffer, table, fmt="%.5f", delimiter=",", header=IMU_HEADER, comments="")
    return buffer.getvalue().encode("ascii")


GENERATORS: dict[str, Callable[[Any], bytes | str]] = {
    "image": image_payload,
    "text": text_payload,
    "audio": audio_payload,
    "video": video_payload,
    "depth": grayscale_payload,
    "thermal": grayscale_payload,
    "imu": imu_payload,
}


def make_pool(kind: str, count: int = POOL_SIZE, seed: int = 0) -> list[bytes | str]:
    """``count`` distinct, deterministic payloads of one modality (texts as str, media as bytes)."""
    import numpy as np

    rng = np.random.default_rng([seed, list(KINDS).index(kind)])
    pool = [GENERATORS[kind](rng) for _ in range(count)]
    if len(set(pool)) < count:  # a short text list could repeat; vary it rather than cache-hit
        pool = [item if isinstance(item, bytes) else f"{item} ({i})" for i, item in enumerate(pool)]
    return pool


def request_body(kind: str, item: bytes | str) -> bytes:
    """The JSON body of a one-item ``/vectorize`` request, encoded once up front."""
    value = item if isinstance(item, str) else base64.b64encode(item).decode("ascii")
    return json.dumps({KINDS[kind].request_key: [value]}).encode("utf-8")


def make_bodies(kinds: set[str], seed: int) -> dict[str, list[bytes]]:
    return {
        kind: [request_body(kind, item) for item in make_pool(kind, seed=seed)] for kind in kinds
    }


class RequestPicker:
    """Seeded draws of (modality, body), so every server sees the same request sequence."""

    def __init__(self, mix: dict[str, float], bodies: dict[str, list[bytes]], seed: int) -> None:
        self._kinds = list(mix)
        self._weights = [mix[kind] for kind in self._kinds]
        self._bodies = bodies
        self._rng = random.Random(seed)

    def next(self) -> tuple[str, bytes]:
        kind = self._rng.choices(self._kinds, self._weights)[0]
        pool = self._bodies[kind]
        return kind, pool[self._rng.randrange(len(pool))]


# --------------------------------------------------------------------------- client


@dataclass(frozen=True)
class Sample:
    """One request: latency in seconds, HTTP status (0: no answer) and what went wrong."""

    latency_s: float
    status: int
    error: str | None = None


@dataclass
class Budget:
    """Stops the clients after ``requests`` requests or ``duration_s`` seconds, if set."""

    requests: int | None
    duration_s: float | None
    issued: int = 0
    deadline: float = field(default=math.inf, init=False)

    def __post_init__(self) -> None:
        if self.duration_s is not None:
            self.deadline = time.perf_counter() + self.duration_s

    def take(self) -> bool:
        if self.requests is not None and self.issued >= self.requests:
            return False
        if time.perf_counter() >= self.deadline:
            return False
        self.issued += 1
        return True


def check_answer(kind: str, status: int, body: bytes) -> str | None:
    """None if the answer holds one vector for the one item sent, else what is wrong."""
    if status != 200:
        return f"HTTP {status}: {body[:300].decode('utf-8', 'replace')}"
    try:
        vectors = json.loads(body)[KINDS[kind].response_key]
    except (ValueError, KeyError, TypeError):
        return f"HTTP 200 without {KINDS[kind].response_key}: {body[:300]!r}"
    if not (isinstance(vectors, list) and len(vectors) == 1 and vectors[0]):
        return f"HTTP 200 but {KINDS[kind].response_key} does not hold one vector"
    return None


async def send_one(session: aiohttp.ClientSession, url: str, kind: str, body: bytes) -> Sample:
    """POST one item; the latency covers sending, the server's work and reading the answer."""
    import aiohttp

    start = time.perf_counter()
    try:
        async with session.post(url, data=body) as response:
            answer = await response.read()
            status = response.status
    except (aiohttp.ClientError, asyncio.TimeoutError) as err:  # noqa: UP041 (distinct on 3.10)
        return Sample(time.perf_counter() - start, 0, f"{type(err).__name__}: {err}")
    latency = time.perf_counter() - start
    return Sample(latency, status, check_answer(kind, status, answer))


async def closed_loop(
    session: aiohttp.ClientSession,
    url: str,
    picker: RequestPicker,
    concurrency: int,
    budget: Budget,
) -> tuple[list[Sample], float]:
    """``concurrency`` clients, each sending its next request when the last one is answered."""
    samples: list[Sample] = []

    async def client() -> None:
        while budget.take():
            kind, body = picker.next()
            samples.append(await send_one(session, url, kind, body))

    start = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    return samples, time.perf_counter() - start


@dataclass(frozen=True)
class Load:
    """How hard and how long to drive one scenario."""

    concurrency: int
    requests: int | None
    duration_s: float | None
    warmup_requests: int
    request_timeout_s: float
    seed: int


async def measure(
    base_url: str, mix: dict[str, float], bodies: dict[str, list[bytes]], load: Load, headers
) -> tuple[list[Sample], float]:
    """Warm up (not counted), then measure, on one session whose connections stay open."""
    import aiohttp

    url = base_url.rstrip("/") + "/vectorize"
    connector = aiohttp.TCPConnector(limit=load.concurrency, limit_per_host=0)
    timeout = aiohttp.ClientTimeout(total=load.request_timeout_s)
    async with aiohttp.ClientSession(
        connector=connector, timeout=timeout, headers=headers
    ) as session:
        if load.warmup_requests:
            warmup = RequestPicker(mix, bodies, seed=load.seed + 1)
            await closed_loop(
                session, url, warmup, load.concurrency, Budget(load.warmup_requests, None)
            )
        picker = RequestPicker(mix, bodies, seed=load.seed)
        budget = Budget(load.requests, load.duration_s)
        return await closed_loop(session, url, picker, load.concurrency, budget)


# --------------------------------------------------------------------------- statistics


def percentile(sorted_values: list[float], q: float) -> float:
    """The q-th percentile (0-100), interpolating linearly as numpy's default does."""
    position = (len(sorted_values) - 1) * q / 100.0
    low = math.floor(position)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (position - low)


def summarize(samples: list[Sample], wall_s: float) -> dict[str, Any]:
    """Counts, throughput (answered items per second) and latency percentiles of successes."""
    ok = sorted(s.latency_s * 1000.0 for s in samples if s.error is None)
    errors = [s.error for s in samples if s.error is not None]

    def stat(q: float) -> float | None:
        return round(percentile(ok, q), 3) if ok else None

    return {
        "requests": len(samples),
        "errors": len(errors),
        "wall_s": round(wall_s, 4),
        "throughput": round(len(ok) / wall_s, 3) if wall_s > 0 else 0.0,
        "p50_ms": stat(50),
        "p90_ms": stat(90),
        "p99_ms": stat(99),
        "mean_ms": round(sum(ok) / len(ok), 3) if ok else None,
        "max_ms": round(ok[-1], 3) if ok else None,
        "error_samples": list(dict.fromkeys(errors))[:ERROR_SAMPLES],
    }


def ratios(batched: dict[str, Any], baseline: dict[str, Any]) -> dict[str, float | None]:
    """Throughput speedup and p99 ratio of batched over baseline (None where undefined)."""
    speedup = batched["throughput"] / baseline["throughput"] if baseline["throughput"] else None
    p99 = (
        batched["p99_ms"] / baseline["p99_ms"]
        if batched["p99_ms"] is not None and baseline["p99_ms"]
        else None
    )
    return {"speedup": speedup, "p99_ratio": p99}


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} ms"


def result_line(label: str, result: dict[str, Any]) -> str:
    return (
        f"  {label:<9} requests {result['requests']:>6}  errors {result['errors']:>4}  "
        f"throughput {result['throughput']:>8.2f} items/s  "
        f"p50 {_ms(result['p50_ms']):>10}  p99 {_ms(result['p99_ms']):>10}"
    )


def ratio_line(ratio: dict[str, float | None]) -> str:
    def x(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.2f}x"

    return (
        f"  speedup (batched/baseline): {x(ratio['speedup'])} throughput, "
        f"p99 batched/baseline: {x(ratio['p99_ratio'])}"
    )


# --------------------------------------------------------------------------- servers


def free_port() -> int:
    """A port the OS reports free on 127.0.0.1 (the server binds it a moment later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def probe(url: str, headers: dict[str, str], timeout: float = 5.0) -> int | None:
    """HTTP status of a GET, or None when nothing answers."""
    request = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status
    except urllib.error.HTTPError as err:
        return err.code
    except (urllib.error.URLError, OSError):
        return None


def fetch_meta(base_url: str, headers: dict[str, str]) -> dict[str, Any]:
    """The server's ``/meta`` (model, device, ...), recorded with the results."""
    request = urllib.request.Request(base_url.rstrip("/") + "/meta", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())
    except (urllib.error.URLError, OSError, ValueError) as err:
        return {"error": f"/meta unavailable: {err}"}


def tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no server output)"
    return "\n".join(text.splitlines()[-lines:]) or "(no server output)"


class ServerProcess:
    """One ``ib-vectorizer serve`` subprocess, always stopped on leaving the ``with``."""

    def __init__(self, mode: str, env: dict[str, str], log_dir: Path | None, headers) -> None:
        self.mode = mode
        self.env = {**env, "IB_MODE": mode}
        self.headers = headers
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._log_dir = log_dir
        self._log_path: Path | None = None
        self._process: subprocess.Popen | None = None

    def __enter__(self) -> ServerProcess:
        if self._log_dir is not None:
            self._log_dir.mkdir(parents=True, exist_ok=True)
            self._log_path = self._log_dir / f"server-{self.mode}.log"
            log = self._log_path.open("wb")
        else:
            log = tempfile.NamedTemporaryFile(prefix=f"ib-bench-{self.mode}-", suffix=".log")
            self._log_path = Path(log.name)
        self._log = log
        command = [sys.executable, "-m", "ib_vectorizer", "serve"]
        command += ["--host", "127.0.0.1", "--port", str(self.port)]
        # Own session: Ctrl+C reaches only the bench, whose ``finally`` stops the server.
        try:
            self._process = subprocess.Popen(
                command,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        except OSError as err:
            self.stop()
            raise BenchError(f"cannot start the {self.mode} server: {err}") from None
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def wait_ready(self, timeout_s: float) -> None:
        """Poll the readiness probe; fail with the server's output if it exits or times out."""
        assert self._process is not None
        deadline = time.monotonic() + timeout_s
        while True:
            code = self._process.poll()
            if code is not None:
                raise BenchError(
                    f"the {self.mode} server exited with status {code} before it was ready; "
                    f"its output ends with:\n{tail(self._log_path)}"
                )
            if probe(self.url + READY_PATH, self.headers) == 204:
                return
            if time.monotonic() > deadline:
                raise BenchError(
                    f"the {self.mode} server was not ready after {timeout_s:g} s; "
                    f"its output ends with:\n{tail(self._log_path)}"
                )
            time.sleep(0.5)

    def stop(self, grace_s: float = 20.0) -> None:
        """SIGTERM to the server's process group, SIGKILL if it is still there after grace."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            _signal_group(process, signal.SIGTERM)
            try:
                process.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                _signal_group(process, signal.SIGKILL)
                process.wait()
        log = getattr(self, "_log", None)
        if log is not None:
            log.close()
            self._log = None


def _signal_group(process: subprocess.Popen, sig: signal.Signals) -> None:
    try:
        os.killpg(process.pid, sig)  # the group the server leads (start_new_session)
    except (ProcessLookupError, PermissionError):
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(sig)


def wait_external(url: str, headers: dict[str, str], timeout_s: float) -> None:
    """A server we did not start: wait while it loads, but not long if nothing listens."""
    start = time.monotonic()
    refused_for_s = min(REFUSED_GRACE_S, timeout_s)
    while True:
        status = probe(url.rstrip("/") + READY_PATH, headers)
        if status == 204:
            return
        waited = time.monotonic() - start
        if status is None and waited > refused_for_s:
            raise BenchError(f"nothing answers at {url} (waited {refused_for_s:g} s)")
        if waited > timeout_s:
            raise BenchError(f"{url} was not ready after {timeout_s:g} s (last status {status})")
        time.sleep(0.5)


def server_env(args: argparse.Namespace) -> dict[str, str]:
    """The environment both started servers get: this one's plus the forwarded settings."""
    env = {**os.environ, "IB_MODEL": args.model, "IB_LOG_LEVEL": args.server_log_level}
    env.pop("IB_PORT", None)
    env.pop("IB_HOST", None)
    if args.random_weights:
        env["IB_RANDOM_WEIGHTS"] = "1"
        env.pop("IB_CHECKPOINT", None)
    else:
        env["IB_RANDOM_WEIGHTS"] = "0"
        if args.checkpoint:
            env["IB_CHECKPOINT"] = str(args.checkpoint)
    forwarded = {
        "IB_DEVICE": args.device,
        "IB_DTYPE": args.dtype,
        "IB_MAX_BATCH": args.max_batch,
        "IB_MAX_WAIT_MS": args.max_wait_ms,
        "IB_PREPROCESS_WORKERS": args.preprocess_workers,
        "IB_API_KEY": args.api_key,
    }
    env.update({name: str(value) for name, value in forwarded.items() if value is not None})
    return env


# --------------------------------------------------------------------------- machine


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def machine_info(device: str | None) -> dict[str, Any]:
    """What the figures were measured on, since README numbers must name their machine."""
    import torch

    cuda = torch.cuda.is_available()
    device = device or ("cuda" if cuda else "cpu")
    gpu = None
    if cuda and device.startswith("cuda"):
        index = int(device.split(":")[1]) if ":" in device else 0
        gpu = torch.cuda.get_device_name(index)
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "device": device,
        "gpu": gpu,
    }


def machine_line(machine: dict[str, Any]) -> str:
    gpu = f", GPU {machine['gpu']}" if machine["gpu"] else ""
    return (
        f"machine: {machine['cpu']}, {machine['cores']} cores, torch {machine['torch']}, "
        f"device {machine['device']}{gpu}"
    )


# --------------------------------------------------------------------------- command


def add_bench_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "bench",
        help="measure throughput and latency under Weaviate's one-item-per-request load",
        description=(
            "N concurrent clients, each sending one item per request in a closed loop. By "
            "default starts the server twice (batched, then baseline) with the same settings "
            "and prints the speedup; --url drives a running server instead."
        ),
    )
    target = parser.add_argument_group("target")
    target.add_argument("--url", default=None, help="drive this running server (no baseline)")
    target.add_argument(
        "--baseline-url", default=None, help="with --url: a running baseline server to compare"
    )
    target.add_argument(
        "--api-key",
        default=os.environ.get("IB_API_KEY") or None,
        help="sent as 'Authorization: Bearer KEY' (env IB_API_KEY)",
    )

    server = parser.add_argument_group("started servers (without --url)")
    server.add_argument(
        "--model",
        default=os.environ.get("IB_MODEL", "imagebind_huge"),
        help="preset name or config.json (env IB_MODEL; default imagebind_huge)",
    )
    server.add_argument(
        "--checkpoint",
        default=os.environ.get("IB_CHECKPOINT") or None,
        help="weights file (env IB_CHECKPOINT)",
    )
    server.add_argument(
        "--random-weights", action="store_true", help="random weights, no checkpoint needed"
    )
    server.add_argument("--device", default=None, help="cpu, cuda or cuda:N")
    server.add_argument("--dtype", choices=("float32", "float16", "bfloat16"), default=None)
    server.add_argument("--max-batch", type=int, default=None, help="IB_MAX_BATCH of the servers")
    server.add_argument(
        "--max-wait-ms", type=float, default=None, help="IB_MAX_WAIT_MS of the servers"
    )
    server.add_argument(
        "--preprocess-workers", type=int, default=None, help="IB_PREPROCESS_WORKERS"
    )
    server.add_argument(
        "--startup-timeout", type=float, default=600.0, help="seconds to wait for ready"
    )
    server.add_argument("--server-log-level", default="WARNING", help="IB_LOG_LEVEL of the servers")
    server.add_argument(
        "--server-logs",
        type=Path,
        default=None,
        help="keep the servers' output in DIR/server-MODE.log (default: discarded)",
    )

    load = parser.add_argument_group("load")
    load.add_argument("--concurrency", type=int, default=32, help="concurrent clients (32)")
    load.add_argument(
        "--requests", type=int, default=None, help="measured requests per scenario (512)"
    )
    load.add_argument(
        "--duration", type=float, default=None, help="measure for at most this many seconds"
    )
    load.add_argument(
        "--warmup-requests",
        type=int,
        default=None,
        help="uncounted requests before each measurement (default 2 × concurrency)",
    )
    load.add_argument(
        "--mix",
        type=_mix_arg,
        action="append",
        default=None,
        help="modality=weight,... over image, text, audio, video, depth, thermal, imu "
        "(default image=1); repeat for several scenarios",
    )
    load.add_argument("--seed", type=int, default=0, help="payloads and request draws")
    load.add_argument(
        "--request-timeout", type=float, default=300.0, help="seconds before a request fails"
    )
    load.add_argument(
        "--max-error-rate",
        type=float,
        default=0.01,
        help="fail (exit 1) when more than this fraction of requests fail (0.01)",
    )
    parser.add_argument("--json", type=Path, default=None, help="also write results as JSON")
    parser.set_defaults(run=run_bench)


def load_from(args: argparse.Namespace) -> Load:
    """Validated load settings; ``--requests`` defaults to 512 unless ``--duration`` is set."""
    if args.concurrency < 1:
        raise BenchError("--concurrency must be at least 1")
    requests = args.requests
    if requests is None and args.duration is None:
        requests = 512
    if requests is not None and requests < 1:
        raise BenchError("--requests must be at least 1")
    if args.duration is not None and args.duration <= 0:
        raise BenchError("--duration must be positive")
    warmup = 2 * args.concurrency if args.warmup_requests is None else args.warmup_requests
    if warmup < 0:
        raise BenchError("--warmup-requests must be at least 0")
    return Load(args.concurrency, requests, args.duration, warmup, args.request_timeout, args.seed)


@dataclass
class Target:
    """A server to measure: started by us (``mode``) or already running (``url``)."""

    label: str
    mode: str | None = None
    url: str | None = None


def targets_from(args: argparse.Namespace) -> list[Target]:
    if args.baseline_url and not args.url:
        raise BenchError("--baseline-url needs --url")
    if args.url:
        if args.baseline_url:
            return [Target("batched", url=args.url), Target("baseline", url=args.baseline_url)]
        return [Target("server", url=args.url)]
    if args.random_weights and args.checkpoint != (os.environ.get("IB_CHECKPOINT") or None):
        raise BenchError("give --checkpoint or --random-weights, not both")
    return [Target("batched", mode="batched"), Target("baseline", mode="baseline")]


@contextlib.contextmanager
def running(
    target: Target, args: argparse.Namespace, headers: dict[str, str]
) -> Iterator[tuple[str, dict[str, Any]]]:
    """The target's URL and /meta while it runs; a started server is stopped afterwards."""
    if target.url is not None:
        wait_external(target.url, headers, args.startup_timeout)
        meta = fetch_meta(target.url, headers)
        if (
            target.label in ("batched", "baseline")
            and meta.get("mode", target.label) != target.label
        ):
            progress(f"warning: the {target.label} URL reports mode {meta['mode']!r}")
        yield target.url, meta
        return
    assert target.mode is not None
    with ServerProcess(target.mode, server_env(args), args.server_logs, headers) as server:
        progress(f"starting the {target.mode} server on {server.url} ...")
        server.wait_ready(args.startup_timeout)
        meta = fetch_meta(server.url, headers)
        if meta.get("mode", target.mode) != target.mode:
            raise BenchError(f"asked for a {target.mode} server, /meta says {meta['mode']!r}")
        yield server.url, meta


def server_line(label: str, url: str, meta: dict[str, Any]) -> str:
    """The settings a server reports in /meta, so the figures say what was measured."""
    shown = {
        "mode": meta.get("mode"),
        "devices": ",".join(meta["devices"]) if isinstance(meta.get("devices"), list) else None,
        "dtype": meta.get("dtype"),
        "max batch views": meta.get("maxBatchViews"),
    }
    details = ", ".join(f"{name} {value}" for name, value in shown.items() if value is not None)
    return f"[{label}] {url}" + (f" ({details})" if details else "")


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """A SIGTERM to the bench unwinds like Ctrl+C, so the servers it started get stopped."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run_bench(args: argparse.Namespace) -> int:
    """Measure every scenario on every target; 0 if all ran with few enough errors."""
    try:
        with sigterm_as_interrupt():
            report = bench(args)
    except BenchError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_FAILED
    failed = [
        f"{scenario['name']} on {label}: {result['errors']}/{result['requests']} failed"
        for scenario in report["scenarios"]
        for label, result in scenario["results"].items()
        if result["requests"] == 0 or result["errors"] > args.max_error_rate * result["requests"]
    ]
    if failed:
        print("error: too many failed requests: " + "; ".join(failed), file=sys.stderr)
        return EXIT_FAILED
    return 0


def bench(args: argparse.Namespace) -> dict[str, Any]:
    """Run the benchmark, print the results as they come, and return them all."""
    load = load_from(args)
    targets = targets_from(args)
    mixes = args.mix or [parse_mix("image=1")]
    headers = {"Content-Type": "application/json"}
    if args.api_key:
        headers["Authorization"] = f"Bearer {args.api_key}"
    probe_headers = {k: v for k, v in headers.items() if k == "Authorization"}

    devices = os.environ.get("IB_DEVICES", "").split(",")[0].strip()
    machine = machine_info(args.device or os.environ.get("IB_DEVICE") or devices or None)
    print(machine_line(machine), flush=True)
    if args.url is None:
        print(f"model: {args.model}", flush=True)
    how = f"{load.requests} requests" if load.requests else f"{load.duration_s:g} s"
    print(
        f"load: {load.concurrency} concurrent clients, one item per request, {how} per scenario "
        f"after {load.warmup_requests} warm-up requests",
        flush=True,
    )
    progress("generating payloads ...")
    bodies = make_bodies({kind for mix in mixes for kind in mix}, seed=load.seed)

    results: dict[str, dict[str, dict[str, Any]]] = {mix_name(mix): {} for mix in mixes}
    servers: dict[str, dict[str, Any]] = {}
    for target in targets:
        with running(target, args, probe_headers) as (url, meta):
            servers[target.label] = {"url": url, "mode": target.mode, "meta": meta}
            print(server_line(target.label, url, meta), flush=True)
            for mix in mixes:
                progress(f"measuring {mix_name(mix)} on {target.label} ...")
                samples, wall_s = asyncio.run(measure(url, mix, bodies, load, headers))
                result = summarize(samples, wall_s)
                results[mix_name(mix)][target.label] = result
                print(f"[{mix_name(mix)}]", result_line(target.label, result).strip(), flush=True)
                for error in result["error_samples"]:
                    print(f"    error: {error}", flush=True)

    report = {
        "machine": machine,
        "load": dataclasses.asdict(load),
        "servers": servers,
        "scenarios": [scenario_report(name, results[name]) for name in results],
    }
    print_summary(report)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
        progress(f"wrote {args.json}")
    return report


def scenario_report(name: str, results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    scenario: dict[str, Any] = {"name": name, "mix": parse_mix(name), "results": results}
    if "batched" in results and "baseline" in results:
        scenario.update(ratios(results["batched"], results["baseline"]))
    return scenario


def print_summary(report: dict[str, Any]) -> None:
    print()
    for scenario in report["scenarios"]:
        print(f"scenario {scenario['name']}:")
        for label, result in scenario["results"].items():
            print(result_line(label, result))
        if "speedup" in scenario:
            print(ratio_line(scenario))
    sys.stdout.flush()
