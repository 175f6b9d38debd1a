"""Embedding through a running ``ib-vectorizer serve`` (``--embed server``).

Batches of objects go to ``POST /vectorize`` as one request per batch, every
field in its modality's list. A 400 names one bad item, so on a 400 the batch
is retried object by object and only the bad objects fail; 503 and network
errors are retried with backoff.
"""

from __future__ import annotations

import base64
import contextlib
import json
import time
import urllib.error
import urllib.request
from collections.abc import Sequence

import apache_beam as beam
import numpy as np

from ib_vectorizer.modalities import Modality
from ib_vectorizer.serving.protocol import RESPONSE_KEYS, WIRE_NAME

from .decode import FAILURES, ReadyObject
from .model_handler import EmbeddedObject
from .objects import Failure

RETRIES = 5


class VectorizerError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def post_vectorize(url: str, payload: dict, timeout: float = 300.0) -> dict:
    """One request, retried on 503/5xx and connection errors; 4xx raises at once."""
    body = json.dumps(payload).encode()
    for attempt in range(RETRIES):
        request = urllib.request.Request(f"{url}/vectorize", data=body,
                                         headers={"Content-Type": "application/json"})  # fmt: skip
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as err:
            message = err.read().decode(errors="replace")
            with contextlib.suppress(json.JSONDecodeError, AttributeError):
                message = json.loads(message).get("error", message)
            if err.code < 500 or attempt == RETRIES - 1:
                raise VectorizerError(err.code, message) from None
        except OSError as err:
            if attempt == RETRIES - 1:
                raise VectorizerError(0, f"vectorizer at {url} unreachable: {err}") from None
        time.sleep(min(2**attempt * 0.5, 10))
    raise AssertionError("unreachable")


def embed_via_server(url: str, objects: Sequence[ReadyObject]) -> list[EmbeddedObject]:
    payload: dict[str, list[str]] = {}
    slots: list[tuple[int, str, Modality]] = []
    for i, obj in enumerate(objects):
        for name, content in obj.media.items():
            modality = obj.modalities[name]
            item = content if modality is Modality.TEXT else base64.b64encode(content).decode()
            payload.setdefault(WIRE_NAME[modality], []).append(item)
            slots.append((i, name, modality))
    answer = post_vectorize(url, payload)
    taken = {modality: 0 for modality in Modality}
    vectors: list[dict[str, np.ndarray]] = [{} for _ in objects]
    for i, name, modality in slots:
        vector = answer[RESPONSE_KEYS[modality]][taken[modality]]
        taken[modality] += 1
        vectors[i][name] = np.asarray(vector, dtype=np.float32)
    return [EmbeddedObject(obj, v) for obj, v in zip(objects, vectors, strict=True)]


class EmbedWithServer(beam.DoFn):
    """A batch of ReadyObjects → EmbeddedObjects (``failures`` output for bad ones)."""

    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")
        self.failed = beam.metrics.Metrics.counter("ib_ingest", "failed")

    def process(self, batch: list[ReadyObject]):
        try:
            results = embed_via_server(self.url, batch)
        except VectorizerError as err:
            # 400 names one bad item, 413 says the batch is too big: retry one by one.
            if err.status not in (400, 413) or len(batch) == 1:
                for obj in batch:
                    self.failed.inc()
                    failure = Failure(obj.source_id, obj.source, "embed", str(err))
                    yield beam.pvalue.TaggedOutput(FAILURES, failure)
                return
            for obj in batch:  # isolate the bad object(s)
                yield from self.process([obj])
            return
        yield from results
