"""ib-ingest's ModelHandler: batches of whole objects in, one vector per field out.

One element is a whole object (all its fields, decoded by the job's own
Decode step), so no shuffle is needed to put an object back together. A
batch's fields are grouped by modality and each group runs through the model
in chunks of at most ``max_batch_views`` encoder passes. Loading and sharing
the model are the public handler's (:class:`pipelines.beam.inference.ImageBindModelBase`).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch

from ib_vectorizer.embedder import Embedder, NonFiniteVectors
from ib_vectorizer.modalities import Modality
from ib_vectorizer.options import ModelOptions

from ..beam.inference import ImageBindModelBase
from .elements import EmbeddedObject, ReadyObject
from .progress import StageTime


def batching_by_views(max_batch_views: int) -> dict[str, Any]:
    """BatchElements arguments: batches sized in encoder passes (an audio field 3, a video 15)."""
    return {"max_batch_size": max_batch_views, "element_size_fn": lambda o: o.views}


def batch_num_bytes(batch: Sequence[ReadyObject]) -> int:
    """What a batch weighs, for Beam's metrics, counted without pickling it."""
    return sum(obj.num_bytes() for obj in batch)


class ObjectModelHandler(ImageBindModelBase):
    """ReadyObjects (decoded) → EmbeddedObjects with a unit vector per field."""

    def __init__(
        self,
        model: ModelOptions,
        max_batch_views: int = 64,
        share_across_processes: bool = False,
    ) -> None:
        super().__init__(model, max_batch_views, share_across_processes)
        self.time = StageTime("embed")

    def run_inference(
        self,
        batch: Sequence[ReadyObject],
        model: Embedder,
        inference_args: dict[str, Any] | None = None,
    ) -> Iterable[EmbeddedObject]:
        vectors: list[dict[str, np.ndarray]] = [{} for _ in batch]
        errors: dict[int, str] = {}
        for modality in Modality:
            slots = [
                (i, name)
                for i, obj in enumerate(batch)
                for name, m in obj.modalities.items()
                if m is modality
            ]
            per_chunk = max(1, self.max_batch_views // modality.views_per_item)
            for start in range(0, len(slots), per_chunk):
                chunk = slots[start : start + per_chunk]
                started = time.perf_counter()
                inputs = torch.stack([batch[i].inputs[name] for i, name in chunk])
                unusable: dict[int, str] = {}
                try:
                    out = model.embed_tensors(modality, inputs).numpy()
                except NonFiniteVectors as err:
                    out, unusable = err.vectors.numpy(), err.reasons
                self.time.add(modality.label, time.perf_counter() - started)
                for row, ((i, name), vector) in enumerate(zip(chunk, out, strict=True)):
                    if row in unusable:
                        errors.setdefault(i, f"{name} ({modality.label}): {unusable[row]}")
                    vectors[i][name] = vector
        return [
            EmbeddedObject(obj, v, errors.get(i))
            for i, (obj, v) in enumerate(zip(batch, vectors, strict=True))
        ]

    def batch_elements_kwargs(self) -> dict[str, Any]:
        return batching_by_views(self.max_batch_views)

    def get_num_bytes(self, batch: Sequence[ReadyObject]) -> int:
        return batch_num_bytes(batch)

    def get_metrics_namespace(self) -> str:
        return "ib_ingest_inference"
