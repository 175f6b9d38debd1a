"""Prometheus metrics, in a registry per server (no process-wide globals)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from ..modalities import Modality

_SECONDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_SIZES = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class _QueueDepth(Collector):
    """Reads the queue's depth at scrape time, so the queue needs no metrics code."""

    def __init__(self, depth: Callable[[], dict[Modality, int]]) -> None:
        self._depth = depth

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "ib_queue_depth", "Items waiting for a model replica", labels=["modality"]
        )
        for modality, count in self._depth().items():
            family.add_metric([modality.value], count)
        yield family


class ServerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "ib_requests", "HTTP requests answered", ["path", "status"], registry=r
        )
        self.request_seconds = Histogram(
            "ib_request_seconds", "Time to answer /vectorize", buckets=_SECONDS, registry=r
        )
        self.errors = Counter("ib_errors", "Failed requests by kind", ["kind"], registry=r)
        self.items = Counter("ib_items_embedded", "Items embedded", ["modality"], registry=r)
        self.preprocess_seconds = Histogram(
            "ib_preprocess_seconds",
            "Decode time per item",
            ["modality"],
            buckets=_SECONDS,
            registry=r,
        )
        self.queue_wait_seconds = Histogram(
            "ib_queue_wait_seconds",
            "Time from queued to batched",
            ["modality"],
            buckets=_SECONDS,
            registry=r,
        )
        self.compute_seconds = Histogram(
            "ib_compute_seconds",
            "Model time per batch",
            ["modality", "device"],
            buckets=_SECONDS,
            registry=r,
        )
        self.batch_items = Histogram(
            "ib_batch_items", "Items per batch", ["modality"], buckets=_SIZES, registry=r
        )
        self.batch_views = Histogram(
            "ib_batch_views", "Encoder passes per batch", ["modality"], buckets=_SIZES, registry=r
        )
        self.decodes_stopped = Counter(
            "ib_decodes_stopped",
            "Items whose decoding stopped because their request had timed out",
            ["modality"],
            registry=r,
        )
        self.memory_held = Gauge(
            "ib_memory_budget_used_bytes",
            "Bytes of the memory budget held by requests: bodies, decoding, decoded inputs",
            registry=r,
        )

    def watch_queue(self, depth: Callable[[], dict[Modality, int]]) -> None:
        self.registry.register(_QueueDepth(depth))

    def watch_memory(self, used: Callable[[], int]) -> None:
        """The budget's use, read at scrape time."""
        self.memory_held.set_function(used)

    def render(self) -> bytes:
        return generate_latest(self.registry)
