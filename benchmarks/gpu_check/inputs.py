"""Seeded synthetic inputs for every modality, raw and preprocessed.

Nothing outside the repository reaches the GPU machine, so the inputs are
made here from a seed with the load generator's own payload makers (a JPEG
photo-like image, a caption, a WAV of tones, an MP4 with motion, grayscale
depth and thermal maps, an IMU CSV), then preprocessed by the product's
:class:`~ib_vectorizer.preprocess.Preprocessor`, as a request's items are.
"""

from __future__ import annotations

import math

import torch

from ib_vectorizer.bench import payloads
from ib_vectorizer.modalities import Modality
from ib_vectorizer.model import ImageBindConfig
from ib_vectorizer.preprocess import Preprocessor


def raw_items(modality: Modality, count: int, seed: int) -> list[bytes | str]:
    """``count`` distinct payloads of ``modality``, the same for the same seed."""
    return payloads.make_pool(modality, count=count, seed=seed)


def preprocessed(config: ImageBindConfig, count: int, seed: int) -> dict[Modality, torch.Tensor]:
    """``count`` model inputs per modality (float32 or token ids, on the CPU)."""
    preprocessor = Preprocessor.for_model(config)
    return {m: preprocessor.load_batch(m, raw_items(m, count, seed)) for m in Modality}


def batch_of(items: torch.Tensor, size: int) -> torch.Tensor:
    """``size`` items, cycling through ``items``: real values at any batch size."""
    repeats = math.ceil(size / items.shape[0])
    return items.repeat(repeats, *([1] * (items.ndim - 1)))[:size].contiguous()


def cosines(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
    """Smallest and mean cosine between matching rows of two (B, dim) arrays."""
    a = torch.nn.functional.normalize(a.double(), dim=-1)
    b = torch.nn.functional.normalize(b.double(), dim=-1)
    values = (a * b).sum(dim=-1)
    return float(values.min()), float(values.mean())
