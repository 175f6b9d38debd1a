"""Inputs in, vectors out, on one device: the piece the CLI, server and pipelines share."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from contextlib import nullcontext
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .errors import InputError
from .modalities import Modality
from .model import ImageBind
from .preprocess import MAX_AUDIO_SECONDS, MAX_VIDEO_SECONDS, Preprocessor, check_items
from .preprocess.limits import MAX_ITEM_BYTES

if TYPE_CHECKING:
    from .options import ModelOptions

_LOW_PRECISION = (torch.float16, torch.bfloat16)
_PAGE_BYTES = 4096  # the smallest page size: a larger page is touched several times, harmlessly


class NonFiniteVectors(Exception):
    """Some rows of a batch have no usable vector: their input overflowed the model's dtype,
    or the model's output is NaN or infinite. The other rows' vectors are good.

    ``reasons``: row → why; ``vectors``: float32 (B, dim) for the whole batch.
    """

    def __init__(self, reasons: dict[int, str], vectors: torch.Tensor) -> None:
        self.reasons = reasons
        self.vectors = vectors
        first = min(reasons)
        super().__init__(f"row {first}: {reasons[first]}")


def _rows_not_finite(values: torch.Tensor) -> list[int]:
    """Rows (along the first axis) holding a NaN or an infinity."""
    finite = torch.isfinite(values.reshape(values.shape[0], -1)).all(dim=1)
    return (~finite).nonzero().flatten().tolist()


class Embedder:
    """Runs an :class:`ImageBind` on raw items or preprocessed batches.

    Raw items are preprocessed for the model's own input geometry
    (``self.preprocessor``); a config preprocessing cannot follow is refused
    here, before anything is embedded. fp16/bf16 weights run under autocast, so
    LayerNorm, softmax and the final normalisation stay in float32.
    ``normalize`` picks unit vectors (default) or the reference's logit-scaled
    outputs; the limits bound the decoding of one video or audio item;
    ``image_decode`` is ``exact`` or ``fast`` (see ``preprocess/image.py``).
    """

    def __init__(
        self,
        model: ImageBind,
        normalize: bool = True,
        *,
        max_video_seconds: float | None = MAX_VIDEO_SECONDS,
        max_audio_seconds: float | None = MAX_AUDIO_SECONDS,
        image_decode: str = "exact",
        max_item_bytes: int = MAX_ITEM_BYTES,
    ) -> None:
        self.preprocessor = Preprocessor.for_model(
            model.config,
            max_video_seconds=max_video_seconds,
            max_audio_seconds=max_audio_seconds,
            image_decode=image_decode,
            max_item_bytes=max_item_bytes,
        )
        self.model = model
        self.normalize = normalize
        first = next(model.parameters())
        self.device = first.device
        self.dtype = first.dtype

    def _autocast(self):
        if self.dtype in _LOW_PRECISION:
            return torch.autocast(self.device.type, dtype=self.dtype)
        return nullcontext()

    @torch.inference_mode()
    def embed_tensors(
        self, modality: Modality | str, batch: torch.Tensor, normalize: bool | None = None
    ) -> torch.Tensor:
        """A stacked batch of model inputs → float32 (B, dim) on the CPU.

        ``normalize`` overrides the embedder's own choice (unit vectors, or the
        reference's scaled outputs) for this call.

        Every vector is finite: rows whose input is not finite in the model's
        dtype (an IMU value of 1e30 is infinite in float16), or whose output is
        NaN or infinite, raise :class:`NonFiniteVectors` naming them, with the
        other rows' vectors.
        """
        modality = Modality.of(modality)
        batch = batch.to(self.device, non_blocking=True)
        reasons: dict[int, str] = {}
        if batch.is_floating_point():
            batch = batch.to(self.dtype)
            for row in _rows_not_finite(batch):
                reasons[row] = f"its values overflow the model's {str(self.dtype)[6:]}"
        with self._autocast():
            unit = self.normalize if normalize is None else normalize
            out = self.model.embed(modality.encoder, batch, normalize=unit)
        vectors = out.float().cpu()
        for row in _rows_not_finite(vectors):
            reasons.setdefault(
                row, "the model's vector for it is not finite (its values are out of range)"
            )
        if reasons:
            raise NonFiniteVectors(reasons, vectors)
        return vectors

    @classmethod
    def from_options(
        cls, options: ModelOptions, model: ImageBind | None = None, **kwargs: Any
    ) -> Embedder:
        """The one way from model options to an embedder: the model they describe (or
        ``model``, made by ``options.create()``: the server shares one between replicas)
        with their decoding settings. ``kwargs``: ``normalize`` and the duration limits."""
        return cls(
            options.create() if model is None else model,
            image_decode=options.image_decode,
            max_item_bytes=options.max_item_bytes,
            **kwargs,
        )

    def example_batch(self, modality: Modality | str, batch: int = 1) -> torch.Tensor:
        """Zeros shaped like ``batch`` preprocessed items, for warming up kernels."""
        return self.preprocessor.example_batch(modality, batch)

    def warm_up(self, batch_sizes: Sequence[int] = (1,)) -> None:
        """Run every modality once per batch size, so the first real request pays no start-up cost.

        Worth it where first calls cost: on CUDA each new kernel is loaded and
        cuBLAS/cuDNN set up on first use, and ``torch.compile`` compiles one
        graph per new shape (batches of 1 and 2 cover every size, as dynamic
        shapes start at 2). On the CPU in eager mode a first call costs no
        more than the next once the weights are in memory (:meth:`read_weights`).
        """
        for modality in Modality:
            for size in batch_sizes:
                self.embed_tensors(modality, self.example_batch(modality, size))

    def load_tokenizer(self) -> None:
        """Build the text tokenizer (its vocabulary takes 0.4 s), so no text request waits on it."""
        self.preprocessor.load_item(Modality.TEXT, "warm up")

    @torch.inference_mode()
    def read_weights(self) -> None:
        """Bring every weight held in CPU memory into RAM, touching each page once.

        A checkpoint is memory-mapped, so loading it reads nothing: without
        this, each encoder's first call would read its weights from disk (the
        file is 4.5 GB for imagebind_huge). Reading them costs disk time only,
        not a model call per modality.
        """
        for tensor in itertools.chain(self.model.parameters(), self.model.buffers()):
            if tensor.device.type != "cpu" or tensor.numel() == 0:
                continue
            flat = tensor.detach().reshape(-1)
            step = max(1, _PAGE_BYTES // flat.element_size())
            flat[::step].sum()
            flat[-1:].sum()  # the last page, which a stride can step over

    def embed(
        self,
        modality: Modality | str,
        items: Sequence[bytes | str],
        batch_size: int = 16,
        normalize: bool | None = None,
    ) -> np.ndarray:
        """Raw items (bytes; strings for text) → float32 (len(items), dim), in input order.

        Decodes and embeds ``batch_size`` items at a time, so memory stays bounded
        however many items come in. A bad item raises
        :class:`~ib_vectorizer.errors.InputError` naming it; nothing is returned.

        ``modality``: a :class:`Modality` or a name users write (``image``,
        ``vision``, ``text``, ...). ``items`` is a list: one bare str or bytes
        is a TypeError (``[item]`` embeds one item).
        """
        modality = Modality.of(modality)
        check_items(items)
        size = max(1, batch_size)
        vectors = [np.zeros((0, self.model.config.out_embed_dim), dtype=np.float32)]
        for start in range(0, len(items), size):
            batch = self.preprocessor.load_batch(
                modality, items[start : start + size], first_index=start
            )
            try:
                vectors.append(self.embed_tensors(modality, batch, normalize).numpy())
            except NonFiniteVectors as err:
                row = min(err.reasons)
                raise InputError(modality.value, start + row, err.reasons[row]) from None
        return np.concatenate(vectors)

    def classify(
        self,
        modality: Modality | str,
        items: Sequence[bytes | str],
        labels: Sequence[str],
        templates: Sequence[str] | None = None,
        batch_size: int = 16,
    ) -> np.ndarray:
        """Zero-shot label probabilities, float32 (len(items), len(labels)), rows summing to 1.

        Computed as the reference computes it: a softmax over the items' outputs
        times each label's text output, both with their logit scales (see
        :mod:`.zero_shot`). ``templates``: the prompts a label is put into
        (``"{}"``: the label as it is); default the modality's
        (:data:`~.zero_shot.TEMPLATES`).
        """
        from .zero_shot import softmax

        return softmax(self.zero_shot_logits(modality, items, labels, templates, batch_size))

    def zero_shot_logits(
        self,
        modality: Modality | str,
        items: Sequence[bytes | str],
        labels: Sequence[str],
        templates: Sequence[str] | None = None,
        batch_size: int = 16,
    ) -> np.ndarray:
        """The logits :meth:`classify` turns into probabilities: what ranks labels exactly
        (far from the top, probabilities are 0 in float32 and tie)."""
        from .zero_shot import label_logits

        modality = Modality.of(modality)
        check_items(items)
        classes = self._label_outputs(modality, labels, templates, batch_size)
        return label_logits(self.embed(modality, items, batch_size, normalize=False), classes)

    def label_scorer(
        self,
        labels: Sequence[str],
        modalities: Sequence[Modality | str],
        templates: Sequence[str] | None = None,
        batch_size: int = 64,
    ):
        """A :class:`~.zero_shot.LabelScorer` of ``labels`` for items of ``modalities``:
        scores stored unit vectors later with no model at hand (only text is embedded)."""
        from .zero_shot import LabelScorer

        chosen = list(dict.fromkeys(Modality.of(m) for m in modalities))
        return LabelScorer(
            labels=tuple(labels),
            classes={m: self._label_outputs(m, labels, templates, batch_size) for m in chosen},
            scales={m: self.model.logit_scale(m.encoder) for m in chosen},
        )

    def _label_outputs(
        self,
        modality: Modality,
        labels: Sequence[str],
        templates: Sequence[str] | None,
        batch_size: int,
    ) -> np.ndarray:
        """Each label's text output for items of ``modality``: its prompts' ensemble, scaled."""
        from .zero_shot import label_vectors, templates_for

        chosen = templates_for(modality, templates)
        prompts = [template.format(label) for label in labels for template in chosen]
        texts = self.embed(Modality.TEXT, prompts, batch_size, normalize=True)
        return label_vectors(texts, len(labels), self.model.logit_scale("text"))
