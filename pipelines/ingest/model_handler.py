"""RunInference's ModelHandler for ImageBind: batches of objects in, field vectors out.

One element is a whole object (all its fields), so no shuffle is needed to put
an object back together. A batch's fields are grouped by modality and each
group runs through the model in chunks of at most ``max_batch_views`` encoder
passes. Beam loads the model once per worker process (``load_model`` through
its ``Shared`` handle) and shares it across the process's threads; with
``share_across_processes`` one copy serves every SDK process on the machine,
which is what a GPU worker wants.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from apache_beam.ml.inference.base import ModelHandler

from ib_vectorizer.embedder import Embedder, resolve_device
from ib_vectorizer.modalities import Modality

from .decode import ReadyObject


def has_scheme(path: str | None) -> bool:
    return bool(path) and "://" in path


def local_copy(uri: str) -> str:
    """Copy a checkpoint from any Beam FileSystem (gs://, s3://, ...) to this worker once."""
    import shutil
    import tempfile
    from pathlib import Path

    from apache_beam.io.filesystems import FileSystems

    target = Path(tempfile.gettempdir()) / "ib_vectorizer" / Path(uri).name
    if target.exists():
        return str(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f"{target.name}.{os.getpid()}.part")
    with FileSystems.open(uri) as source, partial.open("wb") as sink:
        shutil.copyfileobj(source, sink, length=16 << 20)
    os.replace(partial, target)
    return str(target)


@dataclass
class EmbeddedObject:
    ready: ReadyObject
    vectors: dict[str, np.ndarray]  # property → unit vector


class ImageBindModelHandler(ModelHandler[ReadyObject, EmbeddedObject, Embedder]):
    def __init__(
        self,
        model: str,
        checkpoint: str | None,
        device: str | None = None,
        dtype: str | None = None,
        max_batch_views: int = 64,
        share_across_processes: bool = False,
    ) -> None:
        super().__init__()
        self.model_name = model
        self.checkpoint = checkpoint
        self.device = device
        self.dtype = dtype
        self.max_batch_views = max_batch_views
        self._share = share_across_processes

    def load_model(self) -> Embedder:
        from ib_vectorizer.checkpoints import resolve_checkpoint
        from ib_vectorizer.model import create_model

        device = resolve_device(self.device)
        dtype = self.dtype or ("float16" if device.type == "cuda" else "float32")
        checkpoint = local_copy(self.checkpoint) if has_scheme(self.checkpoint) else self.checkpoint
        model = create_model(self.model_name, checkpoint=resolve_checkpoint(checkpoint),
                             device=device, dtype=getattr(torch, dtype))  # fmt: skip
        return Embedder(model, normalize=True)

    def run_inference(
        self,
        batch: Sequence[ReadyObject],
        model: Embedder,
        inference_args: dict[str, Any] | None = None,
    ) -> Iterable[EmbeddedObject]:
        vectors: list[dict[str, np.ndarray]] = [{} for _ in batch]
        for modality in Modality:
            slots = [(i, name) for i, obj in enumerate(batch)
                     for name, m in obj.modalities.items() if m is modality]  # fmt: skip
            per_chunk = max(1, self.max_batch_views // modality.views_per_item)
            for start in range(0, len(slots), per_chunk):
                chunk = slots[start : start + per_chunk]
                inputs = torch.stack([batch[i].inputs[name] for i, name in chunk])
                out = model.embed_tensors(modality, inputs).numpy()
                for (i, name), vector in zip(chunk, out, strict=True):
                    vectors[i][name] = vector
        return [EmbeddedObject(obj, v) for obj, v in zip(batch, vectors, strict=True)]

    def batch_elements_kwargs(self) -> dict[str, Any]:
        # Batches are sized in encoder passes: an audio field costs 3, a video 15.
        return {"max_batch_size": self.max_batch_views, "element_size_fn": lambda o: o.views}

    def share_model_across_processes(self) -> bool:
        return self._share

    def get_metrics_namespace(self) -> str:
        return "ib_ingest_inference"
