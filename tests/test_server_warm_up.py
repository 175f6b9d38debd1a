"""What the server does before ready answers 204, and that requests are served right after."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ib_vectorizer.serving.engine import warm_up, warm_up_mode
from ib_vectorizer.serving.settings import ServerSettings

from .server_process import ServerProcess
from .wire import WIRE, post

CPU = torch.device("cpu")
CUDA = torch.device("cuda", 0)


def test_auto_reads_the_weights_on_the_cpu_and_runs_the_model_on_cuda_or_when_compiled():
    assert warm_up_mode(ServerSettings(), CPU) == "weights"
    assert warm_up_mode(ServerSettings(), CUDA) == "modalities"
    assert warm_up_mode(ServerSettings(compile=True), CPU) == "modalities"
    for mode in ("modalities", "weights", "none"):
        assert warm_up_mode(ServerSettings(warm_up=mode), CUDA) == mode
    with pytest.raises(ValueError, match="IB_WARM_UP must be one of auto, modalities"):
        ServerSettings(warm_up="everything")


class RecordingEmbedder:
    """Stands in for an Embedder: records what warming up asked of it."""

    def __init__(self, model: object, device: torch.device = CPU) -> None:
        self.model = model
        self.device = device
        self.calls: list[tuple] = []

    def warm_up(self, batch_sizes=(1,)) -> None:
        self.calls.append(("modalities", tuple(batch_sizes)))

    def read_weights(self) -> None:
        self.calls.append(("weights",))

    def load_tokenizer(self) -> None:
        self.calls.append(("tokenizer",))


def test_warm_up_does_what_the_mode_says_once_per_model():
    shared = object()
    first, second = RecordingEmbedder(shared), RecordingEmbedder(shared)
    assert warm_up([first, second], ServerSettings()) == "weights"
    assert first.calls == [("weights",), ("tokenizer",)] and second.calls == []

    gpu = RecordingEmbedder(object(), CUDA)
    assert warm_up([gpu], ServerSettings()) == "modalities"
    assert gpu.calls == [("modalities", (1,)), ("tokenizer",)]

    compiled = RecordingEmbedder(object())
    warm_up([compiled], ServerSettings(compile=True))  # batch 1 is specialised, 2 is dynamic
    assert compiled.calls == [("modalities", (1, 2)), ("tokenizer",)]

    idle = RecordingEmbedder(object())
    assert warm_up([idle], ServerSettings(warm_up="none")) == "none"
    assert idle.calls == []


def unit(rows: np.ndarray) -> np.ndarray:
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


@pytest.mark.parametrize("mode", ["auto", "none"])
def test_the_first_request_after_ready_is_served_right_for_every_modality(
    wire_items, expected, mode
):
    with ServerProcess(IB_WARM_UP=mode) as server:
        status, body, _ = post(server.url, wire_items)
        assert f"warmed up ({'weights' if mode == 'auto' else 'none'})" in server.log()
    assert status == 200, body
    for key, (modality, response_key) in WIRE.items():
        vectors = np.array(body[response_key], dtype=np.float32)
        assert vectors.shape == expected[modality].shape, key
        cosine = (vectors * unit(expected[modality])).sum(1)
        assert cosine.min() >= (0.999 if modality == "video" else 0.99999), key
