"""ImageBind as a Beam ``ModelHandler``: ``RunInference`` over media bytes, paths and text.

    results = items | RunInference(ImageBindModelHandler("audio", checkpoint=...))

An element is ``bytes`` (a file of the handler's modality; UTF-8 for text)
or ``str`` (text for the text modality, else a path or any URI Beam's
FileSystems read: ``gs://``, ``s3://``). Each result is a
``PredictionResult`` whose ``inference`` is the item's unit vector
(``numpy`` float32).

Items are decoded one by one before batching (a preprocessing step of the
handler), each bounded by its cost before it is decoded, so an unusable item
fails alone: with ``RunInference(...).with_exception_handling()`` it lands in
``failed_preprocessing[0]`` with the reason, and the rest are embedded.
Beam's ``KeyedModelHandler`` does not accept a handler with a preprocessing
step: use :meth:`ImageBindModelHandler.keyed` (the same per-item decoding,
on keyed elements), or ``decode_before_batching=False``, which decodes in the
batch so an unusable item fails its batch (``failed_inferences``).

Batches are sized in encoder passes (``max_batch_views``: an audio item
costs 3, a video 15). Beam loads the model once per worker process and
shares it across the process's threads; ``share_model_across_processes``
keeps one copy per machine, which is what a GPU worker wants.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from apache_beam.ml.inference.base import KeyedModelHandler, ModelHandler, PredictionResult

from ib_vectorizer.embedder import Embedder, NonFiniteVectors
from ib_vectorizer.errors import InputError, unexpected_failure
from ib_vectorizer.modalities import Modality
from ib_vectorizer.options import ModelOptions
from ib_vectorizer.preprocess import Preprocessor

from ..paths import has_scheme, local_copy

Item = bytes | str


class UnusableItem(ValueError):
    """One element could not be read or decoded; the message names it and says why."""


@dataclass
class DecodedItem:
    """An element and its model input, between decoding and the model."""

    example: Item
    input: torch.Tensor


def describe(item: Any, modality: Modality) -> str:
    """How an error names an element: its path, or its size, or the start of a text."""
    if isinstance(item, str):
        if modality is Modality.TEXT:
            return repr(item if len(item) <= 40 else item[:39] + "…")
        return item
    if isinstance(item, bytes | bytearray | memoryview):
        return f"{len(item)} bytes of {modality.label}"
    return f"a {type(item).__name__}"


class MediaTooLarge(ValueError):
    """A file is larger than one item may be."""


def read_limited(uri: str, limit: int) -> bytes:
    """The bytes of a path or URI, refusing a file larger than ``limit`` unread."""
    from apache_beam.io.filesystems import FileSystems

    with FileSystems.open(uri, compression_type="uncompressed") as handle:
        data = handle.read(limit + 1)
    if len(data) > limit:
        raise MediaTooLarge(f"the file is larger than {limit >> 20} MiB (max_item_mb)")
    return data


def load_embedder(options: ModelOptions) -> Embedder:
    """The model of ``options`` as unit-vector embedder; a remote checkpoint is copied once."""
    if has_scheme(options.checkpoint):  # gs://, s3://, ...: copied to this worker once
        options = dataclasses.replace(options, checkpoint=local_copy(options.checkpoint))
    return Embedder.from_options(options)


class ImageBindModelBase(ModelHandler):
    """What every ImageBind handler shares: the model options, its loading and sharing."""

    def __init__(
        self,
        options: ModelOptions,
        max_batch_views: int = 64,
        share_model_across_processes: bool = False,
    ) -> None:
        super().__init__()
        if max_batch_views < 1:
            raise ValueError(f"max_batch_views must be at least 1, not {max_batch_views}")
        self.options = options
        self.max_batch_views = max_batch_views
        self._share = share_model_across_processes

    def load_model(self) -> Embedder:
        return load_embedder(self.options)

    def share_model_across_processes(self) -> bool:
        return self._share

    def get_metrics_namespace(self) -> str:
        return "imagebind"


class ImageBindModelHandler(ImageBindModelBase):
    """``RunInference`` handler for one modality: elements ``bytes | str`` →
    ``PredictionResult(example, inference=unit vector)``."""

    def __init__(
        self,
        modality: Modality | str,
        *,
        model: str = "imagebind_huge",
        checkpoint: str | None = None,
        random_weights: bool = False,
        device: str | None = None,
        dtype: str | None = None,
        max_batch_views: int = 64,
        share_model_across_processes: bool = False,
        decode_before_batching: bool = True,
        image_decode: str = "exact",
        max_item_mb: int = 1024,
    ) -> None:
        """``model``: a preset name or a config.json; ``checkpoint``: a path or URI of the
        weights (default: the cached ``imagebind_huge.pth``); ``device``/``dtype``:
        default CUDA in float16 when present, else the CPU in float32."""
        options = ModelOptions(
            model=model,
            checkpoint=checkpoint,
            random_weights=random_weights,
            device=device,
            dtype=dtype,
            image_decode=image_decode,
            max_item_mb=max_item_mb,
        )
        self._init(modality, options, max_batch_views, share_model_across_processes)
        self.decode_before_batching = decode_before_batching

    def _init(self, modality, options, max_batch_views, share) -> None:
        ImageBindModelBase.__init__(self, options, max_batch_views, share)
        self.modality = Modality.parse(modality) if isinstance(modality, str) else modality
        # Cheap: the model's input geometry and the decoding limits, no weights.
        self.preprocessor = Preprocessor.from_options(options)

    @property
    def items_per_batch(self) -> int:
        return max(1, self.max_batch_views // self.modality.views_per_item)

    def keyed(self) -> ModelHandler:
        """Beam's ``KeyedModelHandler`` around this model, decoding each ``(key, item)``
        before batching as this handler does, so an unusable item fails alone."""
        inner = self._copy(decode_before_batching=False)
        decode = self.decode

        def decode_keyed(element: tuple[Any, Item]) -> tuple[Any, DecodedItem]:
            key, item = element
            return key, decode(item)

        return KeyedModelHandler(inner).with_preprocess_fn(decode_keyed)

    def _copy(self, **changes: Any) -> ImageBindModelHandler:
        copy = self.__class__.__new__(self.__class__)
        copy.__dict__.update(self.__dict__)
        copy.__dict__.update(changes)
        return copy

    def decode(self, item: Item | DecodedItem) -> DecodedItem:
        """An element → its model input; :class:`UnusableItem` names it and says why."""
        if isinstance(item, DecodedItem):
            return item
        modality = self.modality
        try:
            content: bytes | str
            if modality is Modality.TEXT:
                content = item if isinstance(item, str) else bytes(item).decode("utf-8")
            elif isinstance(item, str):
                content = read_limited(item, self.preprocessor.max_item_bytes)
            elif isinstance(item, bytes | bytearray | memoryview):
                content = bytes(item)
            else:
                raise TypeError(f"expected bytes or str, not {type(item).__name__}")
            tensor = self.preprocessor.load_item(modality, content)
        except InputError as err:
            raise UnusableItem(f"{describe(item, modality)}: {err.reason}") from None
        except (OSError, ValueError, TypeError) as err:  # unreadable, bad UTF-8, too large
            reason = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
            raise UnusableItem(f"{describe(item, modality)}: cannot read it: {reason}") from None
        except Exception as err:  # nothing foreseen: still one line naming the item
            reason = unexpected_failure(err, "decoding it")
            raise UnusableItem(f"{describe(item, modality)}: {reason}") from None
        return DecodedItem(item, tensor)

    def get_preprocess_fns(self):
        return [self.decode] if self.decode_before_batching else []

    def run_inference(
        self,
        batch: Sequence[Item | DecodedItem],
        model: Embedder,
        inference_args: dict[str, Any] | None = None,
    ) -> Iterable[PredictionResult]:
        items = [self.decode(item) for item in batch]  # already decoded, unless keyed
        results: list[PredictionResult] = []
        for start in range(0, len(items), self.items_per_batch):
            chunk = items[start : start + self.items_per_batch]
            inputs = torch.stack([item.input for item in chunk])
            try:
                vectors = model.embed_tensors(self.modality, inputs).numpy()
            except NonFiniteVectors as err:
                row = min(err.reasons)
                bad = describe(chunk[row].example, self.modality)
                raise UnusableItem(f"{bad}: {err.reasons[row]}") from None
            results.extend(
                PredictionResult(item.example, np.asarray(vector, dtype=np.float32))
                for item, vector in zip(chunk, vectors, strict=True)
            )
        return results

    def batch_elements_kwargs(self) -> dict[str, Any]:
        return {"max_batch_size": self.items_per_batch}

    def get_num_bytes(self, batch: Sequence[Item | DecodedItem]) -> int:
        def size(item: Item | DecodedItem) -> int:
            if isinstance(item, DecodedItem):
                return item.input.numel() * item.input.element_size()
            return len(item)

        return sum(size(item) for item in batch)
