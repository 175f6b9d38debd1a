"""ImageBind in Beam's embedding interfaces: RAG ``Chunk``\\ s and ``MLTransform`` columns.

    chunks | MLTransform(write_artifact_location=...).with_transform(ImageBindEmbeddings("text"))

Beam 2.70's ``Chunk`` carries text content only (``Content.text``), so a
chunk of another modality carries the *location* of its media there: a path
or a URI Beam's FileSystems read. :class:`ImageBindEmbeddings` embeds the
text itself for the text modality and the file it names for the others, and
sets ``chunk.embedding`` to the unit vector; Beam's own writers, and
:class:`~pipelines.beam.WeaviateWriteConfig`, take the chunks unchanged.
With ``columns=[...]`` it embeds those columns of dict rows instead (text,
bytes, or paths), replacing each value with its vector, as Beam's other
``MLTransform`` embeddings do.

Items are decoded inside the model's batch here (Beam's embedding transforms
have no per-item step), so an unusable item fails its batch; with
``MLTransform(...).with_exception_handling()`` the batch goes to the failed
output with a reason naming the item.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import apache_beam as beam
from apache_beam.ml.inference.base import ModelHandler, RunInference
from apache_beam.ml.rag.types import Chunk, Embedding
from apache_beam.ml.transforms.base import EmbeddingsManager, EmbeddingTypeAdapter

from ib_vectorizer.modalities import Modality

from .inference import ImageBindModelHandler, Item


def _chunk_items(chunks: Sequence[Chunk]) -> list[str]:
    """What each chunk's embedding is of: its text, or the path/URI of its media."""
    items = []
    for chunk in chunks:
        if not chunk.content.text:
            raise ValueError(f"chunk {chunk.id} has no text content (text, or a media path/URI)")
        items.append(chunk.content.text)
    return items


def _set_embeddings(chunks: Sequence[Chunk], vectors: Sequence[list[float]]) -> list[Chunk]:
    for chunk, vector in zip(chunks, vectors, strict=True):
        chunk.embedding = Embedding(dense_embedding=vector)
    return list(chunks)


def chunk_adapter() -> EmbeddingTypeAdapter:
    """Chunks in, the same chunks with their ``embedding`` set out."""
    return EmbeddingTypeAdapter(input_fn=_chunk_items, output_fn=_set_embeddings)


class _AdaptedHandler(ModelHandler):
    """The ImageBind handler behind an embedding type adapter: rows or chunks in and out."""

    def __init__(self, manager: ImageBindEmbeddings) -> None:
        super().__init__()
        self.adapter = manager.type_adapter
        self.handler = manager.handler
        self.batching = {
            key: value
            for key, value in (
                ("min_batch_size", manager.min_batch_size),
                ("max_batch_size", manager.max_batch_size),
            )
            if value
        }

    def load_model(self):
        return self.handler.load_model()

    def run_inference(self, batch: Sequence[Any], model, inference_args=None) -> list[Any]:
        items: list[Item] = self.adapter.input_fn(batch)
        results = self.handler.run_inference(items, model, inference_args)
        return self.adapter.output_fn(batch, [r.inference.tolist() for r in results])

    def batch_elements_kwargs(self) -> dict[str, Any]:
        return self.batching or self.handler.batch_elements_kwargs()

    def share_model_across_processes(self) -> bool:
        return self.handler.share_model_across_processes()

    def get_metrics_namespace(self) -> str:
        return self.handler.get_metrics_namespace()


class ImageBindEmbeddings(EmbeddingsManager):
    """ImageBind embeddings of one modality for ``MLTransform``: RAG chunks by default,
    or the dict columns ``columns``. Model arguments are :class:`ImageBindModelHandler`'s."""

    def __init__(
        self,
        modality: Modality | str = "text",
        *,
        columns: list[str] | None = None,
        model: str = "imagebind_huge",
        checkpoint: str | None = None,
        random_weights: bool = False,
        device: str | None = None,
        dtype: str | None = None,
        max_batch_views: int = 64,
        share_model_across_processes: bool = False,
        **kwargs: Any,
    ) -> None:
        adapter = None if columns is not None else chunk_adapter()
        super().__init__(columns=columns, type_adapter=adapter, **kwargs)
        self.handler = ImageBindModelHandler(
            modality,
            model=model,
            checkpoint=checkpoint,
            random_weights=random_weights,
            device=device,
            dtype=dtype,
            max_batch_views=max_batch_views,
            share_model_across_processes=share_model_across_processes,
            decode_before_batching=False,
        )

    def get_model_handler(self) -> ModelHandler:
        return self.handler

    def get_ptransform_for_processing(self, **kwargs: Any) -> beam.PTransform:
        transform = RunInference(_AdaptedHandler(self), inference_args=self.inference_args)
        return transform if self.columns is not None else transform.with_output_types(Chunk)
