"""The inference engine: decode in a worker pool, batch across requests, run replicas.

Nothing here knows HTTP. The HTTP layer hands :meth:`Engine.embed` the
items of one request and maps the exceptions it raises to status codes:
:class:`~ib_vectorizer.errors.InputError` (bad item), :class:`Overloaded`
(admission limit), :class:`~.queue.DeadlineExceeded` (too slow),
:class:`NotReady`. Every byte of request data the server holds is taken from
one :class:`~.budget.MemoryBudget` first (the HTTP layer takes the bodies').

Two engines share loading, readiness and decoding:

* :class:`BatchingEngine` (default): each request's items are decoded by the
  :class:`~.decoding.DecodePool`, which serves requests in turn within the
  budget, and go one by one into per-modality queues; one thread per model
  replica takes batches from them.
* :class:`BaselineEngine`: one request at a time under a lock, batching only
  inside the request, like Weaviate's reference container; the benchmark's
  yardstick.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from .. import __version__
from ..embedder import Embedder, NonFiniteVectors
from ..errors import DeadlinePassed, InputError, MediaError
from ..inline import media_bytes
from ..modalities import Modality
from ..preprocess.processes import DecodingProcesses
from .budget import MemoryBudget
from .decoding import DecodeJob, DecodePool
from .metrics import ServerMetrics
from .queue import BatchQueue, DeadlineExceeded, WorkItem
from .settings import ServerSettings

log = logging.getLogger(__name__)

Items = Mapping[Modality, Sequence[str | bytes]]


class Overloaded(Exception):
    """Admitting the request would exceed IB_MAX_QUEUE items in flight."""

    def __init__(self, retry_after_s: float) -> None:
        super().__init__("server is at capacity; retry shortly")
        self.retry_after_s = retry_after_s


class NotReady(Exception):
    """The model is still loading, or the server is shutting down."""


class NonFiniteItem(Exception):
    """The model gave one item no finite vector (set on that item's future by a replica)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def cpu_threads_per_replica(settings: ServerSettings, cpu_replicas: int) -> int:
    """Intra-op threads for CPU replicas: what the decoding pool leaves over, at least one.

    Decoding runs in its own threads at the same time, so letting each model call
    take every core (PyTorch's default) only makes the two fight over them.
    """
    if settings.torch_threads:
        return settings.torch_threads
    cores = os.cpu_count() or 1
    return max(1, cores // (cpu_replicas + 1))


def load_embedders(settings: ServerSettings) -> list[Embedder]:
    """One embedder per configured device; devices named twice share one model."""
    devices = settings.device_list(torch.cuda.is_available())
    cpu_replicas = sum(1 for device in devices if device == "cpu")
    if cpu_replicas and settings.mode == "batched":
        torch.set_num_threads(cpu_threads_per_replica(settings, cpu_replicas))
    checkpoint = settings.checkpoint_path()  # resolved once, loaded once per device
    models: dict[str, torch.nn.Module] = {}
    embedders = []
    for device in devices:
        if device not in models:
            model = settings.create(device, checkpoint=checkpoint)
            if settings.compile:
                for trunk in model.modality_trunks.values():
                    trunk.compile(dynamic=True)
            models[device] = model
        embedders.append(
            Embedder.from_options(
                settings,
                models[device],
                normalize=settings.normalize,
                max_video_seconds=settings.max_video_seconds,
                max_audio_seconds=settings.max_audio_seconds,
            )
        )
    return embedders


def warm_up_mode(settings: ServerSettings, device: torch.device) -> str:
    """What IB_WARM_UP asks of a replica on ``device``: ``auto`` resolved.

    On CUDA the first call of each encoder loads its kernels and sets up
    cuBLAS/cuDNN, and with ``torch.compile`` it compiles: a model call per
    modality is needed and cheap there. On the CPU in eager mode a first call
    costs what the next does once the weights are in memory, so reading them
    is all it takes (imagebind_huge on 2 cores: 1 s, against 34 s for a call
    per modality, a video's 15 views among them).
    """
    if settings.warm_up != "auto":
        return settings.warm_up
    return "modalities" if device.type != "cpu" or settings.compile else "weights"


def warm_up(embedders: Sequence[Embedder], settings: ServerSettings) -> str:
    """Warm each model once (replicas on one device share it); returns what was done."""
    done: dict[int, str] = {}
    for embedder in embedders:
        if id(embedder.model) in done:
            continue
        mode = warm_up_mode(settings, embedder.device)
        if mode == "modalities":
            embedder.warm_up(batch_sizes=(1, 2) if settings.compile else (1,))
        elif mode == "weights":
            embedder.read_weights()
        if mode != "none":
            embedder.load_tokenizer()
        done[id(embedder.model)] = mode
    return ", ".join(dict.fromkeys(done.values())) or "none"


class Engine:
    """Shared life cycle: load in the background, warm up, report ready, drain."""

    def __init__(self, settings: ServerSettings, metrics: ServerMetrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.embedders: list[Embedder] = []
        self.state = "starting"  # starting → ready → draining; or failed
        self.failure: str | None = None
        self.loaded = threading.Event()
        self.in_flight = 0  # requests inside embed(); only touched on the event loop
        self.budget = MemoryBudget(settings.memory_budget_bytes)
        metrics.watch_memory(lambda: self.budget.used)
        self._decoders = DecodingProcesses()  # in the pool's threads until load() says otherwise

    @property
    def max_request_items(self) -> int:
        """A request larger than the admission limit could never be admitted: 413, not 503."""
        return min(self.settings.max_items, self.settings.max_queue)

    @property
    def ready(self) -> bool:
        return self.state == "ready"

    def busy(self) -> str | None:
        """Why the server cannot take another request now (ready answers 503), or None."""
        if self.budget.available < self.settings.max_body_bytes:
            return "its memory budget is taken (IB_MEMORY_BUDGET_MB)"
        return None

    def load(self) -> None:
        """Load and warm up the model replicas (blocking; run it in a thread)."""
        try:
            started = time.perf_counter()
            self.embedders = load_embedders(self.settings)
            loaded = time.perf_counter()
            warmed = warm_up(self.embedders, self.settings)
            if self.settings.mode == "batched":  # the baseline decodes as the reference does
                self._decoders = DecodingProcesses(self.settings.decode_processes)
            self._on_loaded()
            self.state = "ready"
            log.info(
                "ready: %d replica(s) on %s, loaded in %.1f s, warmed up (%s) in %.1f s",
                len(self.embedders),
                ", ".join(str(e.device) for e in self.embedders),
                loaded - started,
                warmed,
                time.perf_counter() - loaded,
            )
        except Exception as err:
            self.state = "failed"
            self.failure = str(err)
            log.exception("model failed to load: %s", err)
        finally:
            self.loaded.set()

    def _on_loaded(self) -> None:
        """Start whatever runs the replicas."""

    def drain(self) -> None:
        """Stop answering ready; requests in flight still finish."""
        if self.state == "ready":
            self.state = "draining"

    def close(self) -> None:
        self._decoders.close()

    def meta(self) -> dict:
        first = self.embedders[0] if self.embedders else None
        return {
            "model": self.settings.model,
            "checkpoint": "random"
            if self.settings.random_weights
            else str(self.settings.checkpoint or "default"),
            "embeddingDim": first.model.config.out_embed_dim if first else None,
            "modalities": [m.value for m in Modality],
            "devices": [str(e.device) for e in self.embedders],
            "dtype": str(first.dtype).removeprefix("torch.") if first else None,
            "normalized": self.settings.normalize,
            "imageDecode": self.settings.image_decode,
            "quantize": self.settings.quantize,
            "mode": self.settings.mode,
            "maxBatchViews": self.settings.max_batch,
            "state": self.state,
            "version": __version__,
        }

    def prepare(self, modality: Modality, index: int, raw: str | bytes) -> torch.Tensor:
        """One wire item → model input, in one go (the baseline's way)."""
        item = WireItem(self, modality, index, raw)
        item.inspect()
        return item.decode()

    async def embed(self, items: Items) -> dict[Modality, np.ndarray]:
        """Vectors for one request's items, per modality and in order."""
        if not self.ready:
            raise NotReady(self.failure or self.state)
        self.in_flight += 1
        try:
            return await self._embed(items)
        finally:
            self.in_flight -= 1

    async def _embed(self, items: Items) -> dict[Modality, np.ndarray]:
        raise NotImplementedError

    def _empty(self) -> np.ndarray:
        return np.zeros((0, self.embedders[0].model.config.out_embed_dim), dtype=np.float32)


class WireItem:
    """One item of a request on its way to model input: inspected, then decoded."""

    def __init__(
        self,
        engine: Engine,
        modality: Modality,
        index: int,
        raw: str | bytes,
        deadline: float | None = None,
    ) -> None:
        self.engine = engine
        self.modality = modality
        self.index = index
        self.raw = raw
        self.deadline = deadline
        self.data: str | bytes | None = None  # the media's bytes, once read from base64

    def inspect(self) -> int:
        """Read the header: what decoding takes (its bytes included); InputError if too much."""
        if self.modality is Modality.TEXT:
            self.data = self.raw
        else:
            try:
                self.data = media_bytes(self.raw)
            except MediaError as err:
                raise InputError(self.modality.value, self.index, str(err)) from None
        preprocessor = self.engine.embedders[0].preprocessor
        cost = preprocessor.inspect(self.modality, self.data, self.index).bytes
        return cost + (len(self.data) if isinstance(self.data, bytes) else 0)

    def decode(self) -> torch.Tensor:
        """The model input (after :meth:`inspect`); the media's bytes are let go."""
        started = time.perf_counter()
        data, self.data = self.data, None
        engine = self.engine
        try:
            tensor = engine._decoders.load_item(
                engine.embedders[0].preprocessor,
                self.modality,
                data,
                self.index,
                deadline=self.deadline,
                inspected=True,
            )
        except DeadlinePassed:
            engine.metrics.decodes_stopped.labels(self.modality.value).inc()
            raise
        engine.metrics.preprocess_seconds.labels(self.modality.value).observe(
            time.perf_counter() - started
        )
        return tensor


class BatchingEngine(Engine):
    def __init__(self, settings: ServerSettings, metrics: ServerMetrics) -> None:
        super().__init__(settings, metrics)
        self.queue = BatchQueue(settings.max_batch, settings.max_wait_ms / 1000)
        metrics.watch_queue(self.queue.depth)
        self._admitted = 0
        self._admit_lock = threading.Lock()
        self._replicas: list[threading.Thread] = []
        self._decoding = DecodePool(
            settings.preprocess_workers or os.cpu_count() or 2,
            self.budget,
            request_share=settings.memory_budget_bytes // 2,
        )

    def busy(self) -> str | None:
        if self._admitted >= self.settings.max_queue:
            return "it holds IB_MAX_QUEUE items already"
        return super().busy()

    def _on_loaded(self) -> None:
        for number, embedder in enumerate(self.embedders):
            thread = threading.Thread(
                target=self._run_replica, args=(embedder,), name=f"replica-{number}", daemon=True
            )
            thread.start()
            self._replicas.append(thread)

    def _run_replica(self, embedder: Embedder) -> None:
        device = str(embedder.device)
        while (batch := self.queue.next_batch()) is not None:
            modality = batch[0].modality
            started = time.monotonic()
            for item in batch:
                self.metrics.queue_wait_seconds.labels(modality.value).observe(
                    started - item.enqueued_at
                )
            inputs = torch.stack([item.inputs for item in batch])
            for item in batch:
                item.inputs = None  # the batch holds them now; freed once computed
            unusable: dict[int, str] = {}
            try:
                vectors = embedder.embed_tensors(modality, inputs)
            except NonFiniteVectors as err:
                vectors, unusable = err.vectors, err.reasons
            except Exception as err:
                log.exception("batch of %d %s item(s) failed on %s", len(batch), modality, device)
                for item in batch:
                    item.future.set_exception(err)
                continue
            finally:
                del inputs
            self.metrics.compute_seconds.labels(modality.value, device).observe(
                time.monotonic() - started
            )
            self.metrics.batch_items.labels(modality.value).observe(len(batch))
            self.metrics.batch_views.labels(modality.value).observe(
                len(batch) * modality.views_per_item
            )
            self.metrics.items.labels(modality.value).inc(len(batch))
            for row, (item, vector) in enumerate(zip(batch, vectors.numpy(), strict=True)):
                if row in unusable:
                    item.future.set_exception(NonFiniteItem(unusable[row]))
                else:
                    item.future.set_result(vector)

    def _admit(self, count: int) -> None:
        with self._admit_lock:
            if self._admitted + count > self.settings.max_queue:
                raise Overloaded(retry_after_s=1.0)
            self._admitted += count

    def _release(self, count: int) -> None:
        with self._admit_lock:
            self._admitted -= count

    async def _embed(self, items: Items) -> dict[Modality, np.ndarray]:
        count = sum(len(v) for v in items.values())
        self._admit(count)
        try:
            return await self._decode_and_queue(items)
        finally:
            self._release(count)

    async def _decode_and_queue(self, items: Items) -> dict[Modality, np.ndarray]:
        """Decode the items in the pool; each goes to the model as soon as it is decoded.

        The deadline covers waiting for decoding, decoding and the model. On the
        first failure the rest is called off: items not decoded yet are dropped,
        those being decoded stop at the deadline, queued ones are skipped.
        """
        deadline = self.queue.clock() + self.settings.request_timeout_s
        keys = [(m, i) for m, values in items.items() for i in range(len(values))]
        if not keys:
            return {m: self._empty() for m in items}
        wire = [WireItem(self, m, i, items[m][i], deadline) for m, i in keys]
        preprocessor = self.embedders[0].preprocessor
        jobs = [DecodeJob(w.inspect, w.decode, preprocessor.item_bytes(w.modality)) for w in wire]
        decodes = self._decoding.submit(jobs, deadline)
        queued: list[WorkItem] = []

        async def embed(item: WireItem, job: DecodeJob) -> np.ndarray:
            try:
                inputs = await asyncio.wrap_future(job.future)
                work = WorkItem(modality=item.modality, inputs=inputs, deadline=deadline)
                del inputs
                queued.append(work)
                self.queue.put([work])
                return await asyncio.wrap_future(work.future)
            except DeadlinePassed:
                raise DeadlineExceeded() from None
            except NonFiniteItem as err:
                raise InputError(item.modality.value, item.index, err.reason) from None
            finally:
                decodes.release(job)

        tasks = [asyncio.ensure_future(embed(w, job)) for w, job in zip(wire, jobs, strict=True)]
        try:
            remaining = max(0.0, deadline - self.queue.clock())
            done, pending = await asyncio.wait(
                tasks, timeout=remaining, return_when=asyncio.FIRST_EXCEPTION
            )
            for task in tasks:  # the first failure in the request's order
                if task in done and task.exception() is not None:
                    raise task.exception()
            if pending:
                raise DeadlineExceeded()
        finally:
            for task in tasks:
                task.cancel()
            for work in queued:
                work.future.cancel()
            decodes.close()
        out: dict[Modality, list[np.ndarray]] = {m: [] for m in items}
        for (m, _), task in zip(keys, tasks, strict=True):
            out[m].append(task.result())
        return {m: np.stack(v) if v else self._empty() for m, v in out.items()}

    def close(self) -> None:
        self.queue.close()
        self._decoding.close()
        for thread in self._replicas:
            thread.join(timeout=30)
        super().close()


class BaselineEngine(Engine):
    """One request at a time, decoding and embedding inside the request (the reference's way)."""

    def __init__(self, settings: ServerSettings, metrics: ServerMetrics) -> None:
        super().__init__(settings, metrics)
        self._lock = asyncio.Lock()
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="baseline")

    async def _embed(self, items: Items) -> dict[Modality, np.ndarray]:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.settings.request_timeout_s):
                async with self._lock:
                    return await loop.run_in_executor(self._worker, self._embed_now, items)
        except TimeoutError:
            raise DeadlineExceeded() from None

    def _embed_now(self, items: Items) -> dict[Modality, np.ndarray]:
        embedder = self.embedders[0]
        out = {}
        for modality, values in items.items():
            if not values:
                out[modality] = self._empty()
                continue
            batch = torch.stack([self.prepare(modality, i, raw) for i, raw in enumerate(values)])
            try:
                out[modality] = embedder.embed_tensors(modality, batch).numpy()
            except NonFiniteVectors as err:
                row = min(err.reasons)
                raise InputError(modality.value, row, err.reasons[row]) from None
            self.metrics.items.labels(modality.value).inc(len(values))
        return out

    def close(self) -> None:
        self._worker.shutdown(wait=True)
        super().close()


def create_engine(settings: ServerSettings, metrics: ServerMetrics) -> Engine:
    engine_class = BaselineEngine if settings.mode == "baseline" else BatchingEngine
    return engine_class(settings, metrics)
