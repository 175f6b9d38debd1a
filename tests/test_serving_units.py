"""Unit tests of the serving logic: the batching queue, settings, and the HTTP error mapping."""

from __future__ import annotations

import asyncio
import logging
import threading

import pytest
import torch
from aiohttp.test_utils import TestClient, TestServer

from ib_vectorizer.inline import inline_bytes, media_bytes
from ib_vectorizer.modalities import Modality
from ib_vectorizer.serving.engine import BatchingEngine
from ib_vectorizer.serving.http import create_app
from ib_vectorizer.serving.metrics import ServerMetrics
from ib_vectorizer.serving.queue import BatchQueue, DeadlineExceeded, WorkItem
from ib_vectorizer.serving.settings import ServerSettings, settings_from, settings_table

from .server_process import TINY_ENV


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def item(modality: Modality, deadline: float = 1e9) -> WorkItem:
    return WorkItem(modality=modality, inputs=torch.zeros(1), deadline=deadline)


def test_batch_is_due_when_enough_views_wait():
    queue = BatchQueue(max_batch_views=6, max_wait_s=10, clock=FakeClock())
    queue.put([item(Modality.AUDIO), item(Modality.AUDIO), item(Modality.AUDIO)])
    batch = queue.next_batch()  # 9 views waiting ≥ 6: due now, takes 2 items = 6 views
    assert [i.modality for i in batch] == [Modality.AUDIO] * 2
    assert queue.depth()[Modality.AUDIO] == 1


def test_small_batch_waits_for_max_wait_then_goes():
    clock = FakeClock()
    queue = BatchQueue(max_batch_views=32, max_wait_s=0.05, clock=clock)
    queue.put([item(Modality.VISION)])
    result: list = []
    worker = threading.Thread(target=lambda: result.append(queue.next_batch()))
    worker.start()
    worker.join(timeout=0.2)
    assert worker.is_alive()  # 1 view < 32 and the clock has not moved: still waiting
    clock.now += 0.06
    with queue._cond:
        queue._cond.notify_all()
    worker.join(timeout=2)
    assert len(result[0]) == 1


def test_oldest_modality_goes_first_and_batches_are_single_modality():
    clock = FakeClock()
    queue = BatchQueue(max_batch_views=100, max_wait_s=0.0, clock=clock)
    queue.put([item(Modality.TEXT)])
    clock.now += 1
    queue.put([item(Modality.VISION), item(Modality.TEXT)])
    assert [i.modality for i in queue.next_batch()] == [Modality.TEXT, Modality.TEXT]
    assert [i.modality for i in queue.next_batch()] == [Modality.VISION]


def test_video_larger_than_max_batch_still_runs_alone():
    queue = BatchQueue(max_batch_views=8, max_wait_s=0.0, clock=FakeClock())
    queue.put([item(Modality.VIDEO), item(Modality.VIDEO)])
    assert len(queue.next_batch()) == 1 and len(queue.next_batch()) == 1


def test_expired_items_fail_and_cancelled_items_are_skipped():
    clock = FakeClock()
    queue = BatchQueue(max_batch_views=100, max_wait_s=0.0, clock=clock)
    late, cancelled, fine = (
        item(Modality.IMU, deadline=100.5),
        item(Modality.IMU),
        item(Modality.IMU),
    )
    queue.put([late, cancelled, fine])
    cancelled.future.cancel()
    clock.now = 101.0
    assert queue.next_batch() == [fine]
    with pytest.raises(DeadlineExceeded):
        late.future.result(timeout=0)


def test_close_drains_then_returns_none():
    queue = BatchQueue(max_batch_views=100, max_wait_s=60, clock=FakeClock())
    queue.put([item(Modality.DEPTH)])
    queue.close()
    assert len(queue.next_batch()) == 1
    assert queue.next_batch() is None


def test_settings_flags_beat_environment_beat_defaults():
    import argparse

    from ib_vectorizer.serving.settings import add_server_flags

    parser = argparse.ArgumentParser()
    add_server_flags(parser)
    args = parser.parse_args(["--max-batch", "7"])
    env = {"IB_MAX_BATCH": "9", "IB_MAX_WAIT_MS": "2.5", "IB_NORMALIZE": "false"}
    settings = settings_from(args, env)
    assert settings.max_batch == 7 and settings.max_wait_ms == 2.5 and settings.normalize is False
    assert settings_from(None, {}).port == 8080
    with pytest.raises(ValueError, match="IB_MAX_QUEUE: expected int"):
        settings_from(None, {"IB_MAX_QUEUE": "lots"})


def test_device_selection_follows_weaviate_variables():
    assert ServerSettings(enable_cuda=True, cuda_core="cuda:1").device_list(True) == ["cuda:1"]
    assert ServerSettings(enable_cuda=False).device_list(True) == ["cpu"]
    assert ServerSettings().device_list(False) == ["cpu"]
    assert ServerSettings(devices="cuda:0, cuda:1").device_list(True) == ["cuda:0", "cuda:1"]
    assert ServerSettings(device="cpu", enable_cuda=True).device_list(True) == ["cpu"]


def test_settings_table_lists_every_variable():
    table = settings_table()
    names = ["IB_MODEL", "IB_CHECKPOINT", "ENABLE_CUDA", "CUDA_CORE", "IB_DEVICES", "IB_DTYPE"]
    names += ["IB_MAX_BATCH", "IB_MAX_WAIT_MS", "IB_MAX_QUEUE", "IB_MAX_BODY_MB"]
    names += ["IB_NORMALIZE", "IB_PREPROCESS_WORKERS", "IB_API_KEY"]
    for name in names:
        assert f"`{name}`" in table


def test_base64_decoding_is_one_rule_for_the_server_and_manifests():
    assert media_bytes("aGVsbG8=") == b"hello"
    assert media_bytes("aGVs\nbG8=") == b"hello"  # MIME line breaks are ignored
    assert media_bytes("data:image/png;base64,aGVsbG8=") == b"hello"
    assert media_bytes("data:,a%20b") == b"a b"
    assert inline_bytes("base64:aGVsbG8=") == inline_bytes("data:;base64,aGVsbG8=") == b"hello"
    assert inline_bytes("photos/cat.jpg") is None  # a path, not inline bytes
    for bad in ["aGVsbG8", "héllo", "a*b=", "data:image/png;base64"]:
        with pytest.raises(ValueError, match=r"base64|data URI"):
            media_bytes(bad)


def tiny_settings() -> ServerSettings:
    return ServerSettings(model=TINY_ENV["IB_MODEL"], checkpoint=TINY_ENV["IB_CHECKPOINT"])


async def _readiness_follows_loading() -> None:
    engine = BatchingEngine(tiny_settings(), ServerMetrics())
    async with TestClient(TestServer(create_app(engine))) as client:
        assert (await client.get("/.well-known/live")).status == 204
        assert (await client.get("/.well-known/ready")).status == 503
        response = await client.post("/vectorize", json={"texts": ["hi"]})
        assert response.status == 503 and "not ready" in (await response.json())["error"]
        await asyncio.get_running_loop().run_in_executor(None, engine.load)
        assert (await client.get("/.well-known/ready")).status == 204
        assert (await client.post("/vectorize", json={"texts": ["hi"]})).status == 200
        engine.drain()
        assert (await client.get("/.well-known/ready")).status == 503
    engine.close()


def test_readiness_before_and_after_loading():
    asyncio.run(_readiness_follows_loading())


class ExplodingEngine(BatchingEngine):
    async def _embed(self, items):
        raise RuntimeError("kaboom")


async def _unexpected_errors_are_500() -> None:
    engine = ExplodingEngine(tiny_settings(), ServerMetrics())
    engine.state = "ready"
    async with TestClient(TestServer(create_app(engine))) as client:
        response = await client.post("/vectorize", json={"texts": ["hi"]})
        assert response.status == 500
        assert (await response.json()) == {"error": "internal server error; see the server log"}
    engine.close()


def test_unexpected_error_is_500_json_and_logged_with_traceback(caplog):
    with caplog.at_level(logging.ERROR):
        asyncio.run(_unexpected_errors_are_500())
    assert any("kaboom" in (r.exc_text or "") for r in caplog.records)


def test_the_documented_configuration_table_is_current():
    from pathlib import Path

    reference = (Path(__file__).parent.parent / "docs" / "server.md").read_text()
    assert settings_table() in reference
