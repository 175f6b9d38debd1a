"""Inputs in, vectors out, on one device: the piece the CLI, server and pipelines share."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext

import numpy as np
import torch

from .modalities import Modality
from .model import ImageBind
from .preprocess import load_batch

_LOW_PRECISION = (torch.float16, torch.bfloat16)


def resolve_device(device: str | None) -> torch.device:
    """``None`` means CUDA when present, else CPU."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available")
    return resolved


class Embedder:
    """Runs an :class:`ImageBind` on preprocessed batches.

    fp16/bf16 weights run under autocast, so LayerNorm, softmax and the final
    normalisation stay in float32. ``normalize`` picks unit vectors (default)
    or the reference's logit-scaled outputs.
    """

    def __init__(self, model: ImageBind, normalize: bool = True) -> None:
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
    def embed_tensors(self, modality: Modality | str, batch: torch.Tensor) -> torch.Tensor:
        """A stacked batch of model inputs → float32 (B, dim) on the CPU."""
        modality = Modality(modality)
        batch = batch.to(self.device, non_blocking=True)
        if batch.is_floating_point():
            batch = batch.to(self.dtype)
        with self._autocast():
            out = self.model.embed(modality.encoder, batch, normalize=self.normalize)
        return out.float().cpu()

    def example_batch(self, modality: Modality | str, batch: int = 1) -> torch.Tensor:
        """Zeros shaped like ``batch`` preprocessed items, for warming up kernels."""
        c = self.model.config
        size = c.image_size
        shapes = {
            Modality.VISION: (3, size, size),
            Modality.VIDEO: (Modality.VIDEO.views_per_item, 3, c.video_frames, size, size),
            Modality.AUDIO: (Modality.AUDIO.views_per_item, 1, c.audio_num_mel_bins,
                             c.audio_target_len),
            Modality.DEPTH: (1, size, size),
            Modality.THERMAL: (1, size, size),
            Modality.IMU: (c.imu_channels, c.imu_samples),
        }  # fmt: skip
        modality = Modality(modality)
        if modality is Modality.TEXT:
            return torch.zeros(batch, c.context_length, dtype=torch.int64)
        return torch.zeros(batch, *shapes[modality])

    def warm_up(self) -> None:
        """Run every modality once so the first real request pays no start-up cost."""
        for modality in Modality:
            self.embed_tensors(modality, self.example_batch(modality))

    def embed(
        self, modality: Modality | str, items: Sequence[bytes | str], batch_size: int = 16
    ) -> np.ndarray:
        """Raw items (bytes; strings for text) → float32 (len(items), dim), in input order.

        Decodes and embeds ``batch_size`` items at a time, so memory stays bounded
        however many items come in. A bad item raises
        :class:`~ib_vectorizer.errors.InputError` naming it; nothing is returned.
        """
        modality = Modality(modality)
        size = max(1, batch_size)
        vectors = [np.zeros((0, self.model.config.out_embed_dim), dtype=np.float32)]
        for start in range(0, len(items), size):
            batch = load_batch(modality, items[start : start + size], first_index=start)
            vectors.append(self.embed_tensors(modality, batch).numpy())
        return np.concatenate(vectors)
