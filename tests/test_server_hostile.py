"""The inference server against hostile uploads, over real HTTP.

Every bomb is a 400 naming the item and the limit (or, for odd sample rates, a
finite vector), the process stays within its memory budget, stalled uploads
lose their slot, one request cannot hold the decoders from the others, and a
request that times out gives its memory back.
"""

from __future__ import annotations

import base64
import json
import math
import random
import re
import socket
import string
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from .hostile import bombs, png, wav
from .media import encode_audio, encode_video, indexed_frames
from .server_process import ServerProcess, http_status
from .wire import RESPONSE_KEYS, post

GiB = 1 << 30
BUDGET_MB = 1280  # with IB_MAX_ITEM_MB 1024: keeps the process within 1.5 GiB of idle


@pytest.fixture(scope="module")
def server():
    with ServerProcess(
        IB_MEMORY_BUDGET_MB=str(BUDGET_MB),
        IB_PREPROCESS_WORKERS="4",
        IB_BODY_TIMEOUT_S="2",
        IB_REQUEST_TIMEOUT_S="60",
    ) as running:
        yield running


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def memory(server) -> tuple[int, int]:
    """(resident bytes now, the most it has been), from the kernel."""
    status = Path(f"/proc/{server.process.pid}/status").read_text()
    now, peak = (
        int(re.search(rf"{key}:\s+(\d+) kB", status).group(1)) * 1024 for key in ("VmRSS", "VmHWM")
    )
    return now, peak


def metric(server, name: str) -> float:
    """A sample of the server's /metrics (0 when it has none yet)."""
    with urllib.request.urlopen(server.url + "/metrics", timeout=10) as response:
        text = response.read().decode()
    found = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
    return float(found.group(1)) if found else 0.0


def budget_used(server) -> float:
    return metric(server, "ib_memory_budget_used_bytes")


def strict_json(body: bytes) -> dict:
    """JSON as Weaviate's Go decoder reads it: a bare NaN or Infinity is an error."""

    def refuse(name: str):
        raise ValueError(f"{name} is not JSON")

    return json.loads(body, parse_constant=refuse)


def check_answer(bomb, status: int, body: dict) -> None:
    if bomb.refused is None:
        assert status == 200, (bomb.name, body)
        vector = np.array(body["audioVectors"][0])
        assert np.isfinite(vector).all() and abs(np.linalg.norm(vector) - 1) < 1e-4, bomb.name
    else:
        assert status == 400, (bomb.name, status, body)
        assert body["error"].startswith(f"{bomb.key}[0]: "), (bomb.name, body)
        assert bomb.refused in body["error"], (bomb.name, body)


def expensive_items() -> list[tuple[str, str]]:
    """Small uploads that are accepted and cost hundreds of MiB to decode."""
    flat = png(9000, 9000)  # 80 KB; 81 megapixels, about 420 MiB decoded in RGB
    silence = np.zeros((2, 48_000 * 300))
    flac = encode_audio(silence, 48_000, "flac", "flac")  # 5 minutes of stereo: 230 MiB decoded
    return [("images", b64(flat))] * 6 + [("audio", b64(flac))] * 4


def test_every_bomb_is_refused_or_embedded_and_memory_stays_in_budget(server):
    idle, _ = memory(server)
    catalogue = bombs()
    for bomb in catalogue:  # one at a time: what each item costs alone
        status, body, _ = post(server.url, {bomb.key: [b64(bomb.data)]})
        check_answer(bomb, status, body)
    # The most an accepted item may cost: a 169-megapixel PNG, 830 MiB by its header.
    status, body, _ = post(server.url, {"images": [b64(png(13_000, 13_000))]})
    assert status == 200 and np.isfinite(body["imageVectors"][0]).all()
    _, alone = memory(server)
    assert alone - idle < 1.5 * GiB, f"one item took the server {(alone - idle) / GiB:.2f} GiB up"

    # Everything at once, with items that are accepted and expensive, from 16 clients.
    expensive = expensive_items()
    with ThreadPoolExecutor(max_workers=16) as clients:
        answers = list(clients.map(lambda b: post(server.url, {b.key: [b64(b.data)]}), catalogue))
        heavy = list(clients.map(lambda item: post(server.url, {item[0]: [item[1]]}), expensive))
    for bomb, (status, body, _) in zip(catalogue, answers, strict=True):
        check_answer(bomb, status, body)
    assert [status for status, _, _ in heavy] == [200] * len(heavy), [b for _, b, _ in heavy]
    _, peak = memory(server)
    assert peak - idle < 1.5 * GiB, f"the server went {(peak - idle) / GiB:.2f} GiB over idle"
    assert http_status(server.url + "/.well-known/ready") == 204
    assert budget_used(server) == 0  # every request gave its memory back


def test_answers_are_strict_json_and_non_finite_input_is_refused(server):
    raw = urllib.request.Request(
        server.url + "/vectorize",
        data=json.dumps(
            {"audio": [b64(next(b for b in bombs() if "NaN" in b.name).data)]}
        ).encode(),
        method="POST",
        headers={"Content-Type": "application/json"},
    )
    try:
        urllib.request.urlopen(raw, timeout=60)
        raise AssertionError("a NaN audio file was embedded")
    except urllib.error.HTTPError as err:
        assert err.code == 400 and "NaN" in strict_json(err.read())["error"]
    # A good answer parses under the strict rule too.
    status, body, _ = post(
        server.url, {"audio": [b64(wav(np.zeros((1, 16_000), np.int16), 16_000))]}
    )
    assert status == 200 and sorted(body) == sorted(RESPONSE_KEYS)


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"[" * 1000 + b"]" * 1000, "nested too deeply"),
        (b'{"texts": ' + b"[" * 5000 + b"]" * 5000 + b"}", "nested too deeply"),
        (b'{"texts": ["a"], "images": [' + b'"x",' * 3 + b"]", "not valid JSON"),
    ],
)
def test_malformed_json_is_a_400_with_a_reason(server, body, reason):
    status, answer, _ = post(server.url, body)
    assert status == 400 and reason in answer["error"]


def _stalled_upload(url: str, declared: int, sent: int) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=30)
    head = (
        f"POST /vectorize HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {declared}\r\n\r\n"
    )
    sock.sendall(head.encode() + b'{"texts": ["' + b"a" * (sent - 12))
    return sock


def test_stalled_uploads_lose_their_slot_and_others_are_answered(server):
    stalled = [_stalled_upload(server.url, 1_000_000, 4096) for _ in range(24)]
    try:
        # While 24 uploads hang part-way, the server answers at once and says it is ready.
        status, body, _ = post(server.url, {"texts": ["a dog"]}, timeout=20)
        assert status == 200 and len(body["textVectors"]) == 1
        assert http_status(server.url + "/.well-known/ready") == 204
        # IB_BODY_TIMEOUT_S later each stalled client gets 408 and its connection is closed.
        for sock in stalled:
            answer = sock.recv(4096).decode()
            assert answer.startswith("HTTP/1.1 408"), answer[:200]
            assert "IB_BODY_TIMEOUT_S" in answer
    finally:
        for sock in stalled:
            sock.close()
    assert budget_used(server) == 0


def test_one_request_cannot_hold_the_decoders_from_the_others(server, wire_items):
    rng = random.Random(7)
    words = ["".join(rng.choices(string.ascii_lowercase, k=2048)) for _ in range(96)]
    finished = threading.Event()
    answers = []

    def long_request():
        answers.append(post(server.url, {"texts": words}, timeout=120))
        finished.set()

    worker = threading.Thread(target=long_request)
    worker.start()
    try:
        time.sleep(0.5)  # the long request is being decoded
        status, body, _ = post(server.url, {"images": wire_items["images"][:1]}, timeout=60)
        assert status == 200 and len(body["imageVectors"]) == 1
        assert not finished.is_set(), "the image request waited for every text to be decoded"
    finally:
        worker.join()
    assert answers[0][0] == 200 and len(answers[0][1]["textVectors"]) == len(words)


def test_ready_is_503_while_the_memory_budget_is_taken():
    limits = {"IB_MEMORY_BUDGET_MB": "100", "IB_MAX_ITEM_MB": "64", "IB_MAX_BODY_MB": "32"}
    with ServerProcess(**limits, IB_BODY_TIMEOUT_S="3") as small:
        # Uploads that have sent most of a large body hold its bytes until they time out:
        # 90 of 100 MiB held, less than one more body's worth free.
        uploads = [_stalled_upload(small.url, 32 << 20, 30 << 20) for _ in range(3)]
        try:
            deadline = time.monotonic() + 30
            while http_status(small.url + "/.well-known/ready") != 503:
                assert time.monotonic() < deadline, "ready never turned 503"
                time.sleep(0.05)
            for sock in uploads:
                assert sock.recv(4096).startswith(b"HTTP/1.1 408")
        finally:
            for sock in uploads:
                sock.close()
        deadline = time.monotonic() + 30
        while http_status(small.url + "/.well-known/ready") != 204:
            assert time.monotonic() < deadline, "ready stayed 503 after the uploads timed out"
            time.sleep(0.05)


def test_a_request_that_times_out_stops_and_gives_its_memory_back():
    # 4 minutes of tiny frames: decoding runs to the last clip, about a second here.
    long_video = b64(encode_video(indexed_frames(12_000, 96, 64), fps=50))
    with ServerProcess(IB_REQUEST_TIMEOUT_S="0.2", IB_PREPROCESS_WORKERS="1") as server:
        status, body, _ = post(server.url, {"video": [long_video] * 4})
        assert status == 504 and "IB_REQUEST_TIMEOUT_S" in body["error"]
        deadline = time.monotonic() + 30
        while budget_used(server) != 0:
            assert time.monotonic() < deadline, "a timed-out request kept its memory"
            time.sleep(0.05)
        # The video being decoded stopped at the deadline; the three waiting never started.
        assert metric(server, 'ib_decodes_stopped_total{modality="video"}') == 1
        assert metric(server, 'ib_preprocess_seconds_count{modality="video"}') == 0
        assert http_status(server.url + "/.well-known/ready") == 204


def test_settings_that_cannot_hold_an_item_are_refused_at_start():
    from ib_vectorizer.serving.settings import ServerSettings

    with pytest.raises(ValueError, match=r"IB_MEMORY_BUDGET_MB \(512\) must hold"):
        ServerSettings(memory_budget_mb=512, max_item_mb=1024)
    assert math.isclose(ServerSettings().memory_budget_bytes / GiB, 4.0)
