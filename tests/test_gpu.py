"""fp16/bf16 on a CUDA device. Skipped where there is no GPU (CI has none)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ib_vectorizer.embedder import Embedder
from ib_vectorizer.model import create_model

from .fixture_data import FIXTURE

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_on_cuda_matches_float32(preprocessed, expected, dtype):
    model = create_model(
        FIXTURE / "config.json", checkpoint=FIXTURE / "state_dict.pt", device="cuda", dtype=dtype
    )
    embedder = Embedder(model)
    for modality in ["vision", "text", "audio", "depth", "thermal", "imu", "video"]:
        out = embedder.embed_tensors(modality, torch.from_numpy(preprocessed[modality])).numpy()
        reference = expected[modality] / np.linalg.norm(expected[modality], axis=1, keepdims=True)
        cosine = (out * reference).sum(1)
        assert cosine.min() > 0.999, (modality, dtype, cosine)
