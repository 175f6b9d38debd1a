"""Embedding through a running ``ib-vectorizer serve`` (``--embed server``).

:class:`ServerModelHandler` is a Beam ``RemoteModelHandler``, so RunInference
brings Beam's own handling of a remote endpoint: retries with exponential
backoff and jitter, and client-side throttling when the server keeps
answering 503. A batch of objects goes to ``POST /vectorize`` as one request,
every field in its modality's list. A 400 names one bad item and a 413 says
the batch is too large, and neither is worth retrying: then the batch is sent
again object by object, so only the bad objects fail, each with the server's
message, and the rest get their vectors.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from apache_beam.ml.inference.base import RemoteModelHandler

from ib_vectorizer.modalities import Modality
from ib_vectorizer.serving.protocol import RESPONSE_KEYS, WIRE_NAME

from ..vectorizer import VectorizerError, post_vectorize
from .elements import EmbeddedObject, ReadyObject
from .model_handler import batch_num_bytes, batching_by_views

ISOLATE = (400, 413)  # the request names a bad item, or is too large: split it


def worth_retrying(err: Exception) -> bool:
    """No answer, 429 or a 5xx (a restarting or overloaded server); never a 4xx verdict."""
    if isinstance(err, VectorizerError):
        return err.status == 0 or err.status == 429 or err.status >= 500
    return True


def embed_via_server(url: str, objects: Sequence[ReadyObject]) -> list[EmbeddedObject]:
    """All fields of ``objects`` in one request; their vectors, object by object."""
    payload: dict[str, list[str]] = {}
    slots: list[tuple[int, str, Modality]] = []
    for i, obj in enumerate(objects):
        for name in obj.media:
            modality = obj.modalities[name]
            payload.setdefault(WIRE_NAME[modality], []).append(obj.wire_item(name))
            slots.append((i, name, modality))
    answer = post_vectorize(url, payload)
    taken = dict.fromkeys(Modality, 0)
    vectors: list[dict[str, np.ndarray]] = [{} for _ in objects]
    for i, name, modality in slots:
        vector = answer[RESPONSE_KEYS[modality]][taken[modality]]
        taken[modality] += 1
        vectors[i][name] = np.asarray(vector, dtype=np.float32)
    return [EmbeddedObject(obj, v) for obj, v in zip(objects, vectors, strict=True)]


@dataclass(frozen=True)
class Vectorizer:
    """The "model" of the remote handler: where the server is."""

    url: str


class ServerModelHandler(RemoteModelHandler[ReadyObject, EmbeddedObject, Vectorizer]):
    def __init__(self, url: str, max_batch_views: int = 64, num_retries: int = 5) -> None:
        super().__init__(
            namespace="ib_ingest_server", num_retries=num_retries, retry_filter=worth_retrying
        )
        self.url = url.rstrip("/")
        self.max_batch_views = max_batch_views

    def create_client(self) -> Vectorizer:
        return Vectorizer(self.url)

    def request(
        self,
        batch: Sequence[ReadyObject],
        model: Vectorizer,
        inference_args: dict[str, Any] | None = None,
    ) -> list[EmbeddedObject]:
        try:
            return embed_via_server(model.url, batch)
        except VectorizerError as err:
            if err.status not in ISOLATE:
                raise  # retried by RunInference, then dead-lettered with the batch
            if len(batch) == 1:
                return [EmbeddedObject(batch[0], {}, error=str(err))]
        return [self.request([obj], model)[0] for obj in batch]

    def batch_elements_kwargs(self) -> dict[str, Any]:
        return batching_by_views(self.max_batch_views)

    def get_num_bytes(self, batch: Sequence[ReadyObject]) -> int:
        return batch_num_bytes(batch)

    def get_metrics_namespace(self) -> str:
        return "ib_ingest_inference"
