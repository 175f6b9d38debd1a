"""The closed-loop load driver: Weaviate's traffic pattern, reproduced against one server.

Weaviate's ``multi2vec-bind`` module sends one object per request from many
concurrent import workers, so the driver runs N clients that each send ONE
item, wait for the answer and send the next. The modality of each request is
drawn from a weighted mix with a seeded generator, so every server measured
sees the same request sequence; every answer is checked, and a wrong one
counts as an error, not as a fast request.

aiohttp is imported where it is used, so importing this module stays cheap.
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..modalities import Modality
from ..serving.protocol import RESPONSE_KEYS

if TYPE_CHECKING:
    import aiohttp

# ------------------------------------------------------------------------------------- mix


def parse_mix(text: str) -> dict[str, float]:
    """``"audio=1,text=2"`` → ``{"audio": 1.0, "text": 2.0}``; a bare name weighs 1.

    Names are modality labels (``image``, ``text``, ...; ``vision``, ``images``
    and ``texts`` are accepted too). Zero weights are dropped; the weights need
    not sum to 1.
    """
    mix: dict[str, float] = {}
    for part in text.split(","):
        written, _, weight_text = part.strip().partition("=")
        try:
            name = Modality.parse(written.strip()).label
        except ValueError as err:
            raise ValueError(f"in mix {text!r}: {err}") from None
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


# ---------------------------------------------------------------------------------- client


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
    key = RESPONSE_KEYS[Modality.parse(kind)]
    try:
        vectors = json.loads(body)[key]
    except (ValueError, KeyError, TypeError):
        return f"HTTP 200 without {key}: {body[:300]!r}"
    if not (isinstance(vectors, list) and len(vectors) == 1 and vectors[0]):
        return f"HTTP 200 but {key} does not hold one vector"
    return None


async def send_one(session: aiohttp.ClientSession, url: str, kind: str, body: bytes) -> Sample:
    """POST one item; the latency covers sending, the server's work and reading the answer."""
    import aiohttp

    start = time.perf_counter()
    try:
        async with session.post(url, data=body) as response:
            answer = await response.read()
            status = response.status
    except (aiohttp.ClientError, TimeoutError) as err:
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
    base_url: str,
    mix: dict[str, float],
    bodies: dict[str, list[bytes]],
    load: Load,
    headers: dict[str, str],
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
