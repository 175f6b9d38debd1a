"""The pipeline's two model handlers: against the real inference server, and their batch sizes."""

from __future__ import annotations

import json
import urllib.request

import numpy as np
import pytest
import torch

from ib_vectorizer.modalities import Modality
from ib_vectorizer.options import ModelOptions
from pipelines.ingest.elements import ReadyObject
from pipelines.ingest.model_handler import ObjectModelHandler
from pipelines.ingest.server_embed import ServerModelHandler, Vectorizer, worth_retrying
from pipelines.vectorizer import VectorizerError

from .fixture_data import INPUTS
from .server_process import ServerProcess


def ready(source_id: str, **media: bytes | str) -> ReadyObject:
    modalities = {"text": Modality.TEXT, "image": Modality.VISION, "audio": Modality.AUDIO}
    return ReadyObject(
        source_id=source_id,
        source=f"{source_id}.src",
        properties={},
        media=media,
        modalities={name: modalities[name] for name in media},
    )


@pytest.fixture(scope="module")
def server():
    with ServerProcess() as running:
        yield running


def vector_of(url: str, key: str, item: str) -> np.ndarray:
    request = urllib.request.Request(
        url + "/vectorize",
        data=json.dumps({key: [item]}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        answer = json.loads(response.read())
    return np.asarray(next(v for v in answer.values() if v)[0], dtype=np.float32)


def test_a_bad_object_fails_alone_and_the_others_get_their_vectors(server):
    good_text = ready("a", text="a dog barking")
    broken = ready("b", image=b"not an image at all")
    good_both = ready("c", text="rain", audio=(INPUTS / "tone_16k_mono.wav").read_bytes())
    handler = ServerModelHandler(server.url)
    results = handler.request([good_text, broken, good_both], Vectorizer(server.url))
    assert [r.ready.source_id for r in results] == ["a", "b", "c"]
    assert results[1].error is not None and "not a decodable image" in results[1].error
    assert results[1].vectors == {}
    assert results[0].error is None and results[2].error is None
    np.testing.assert_allclose(
        results[0].vectors["text"], vector_of(server.url, "texts", "a dog barking"), atol=1e-6
    )
    audio = good_both.wire_item("audio")
    np.testing.assert_allclose(
        results[2].vectors["audio"], vector_of(server.url, "audio", audio), atol=1e-6
    )


def test_a_server_that_is_down_raises_for_beam_to_retry():
    handler = ServerModelHandler("http://127.0.0.1:9")  # nothing listens on the discard port
    with pytest.raises(VectorizerError) as raised:
        handler.request([ready("a", text="x")], Vectorizer("http://127.0.0.1:9"))
    assert raised.value.status == 0 and worth_retrying(raised.value)


@pytest.mark.parametrize(
    ("status", "retry"),
    [(0, True), (429, True), (500, True), (503, True), (400, False), (413, False)],
)
def test_only_transient_answers_are_retried(status, retry):
    assert worth_retrying(VectorizerError(status, "x")) is retry


def test_batches_are_weighed_without_pickling_them():
    image = torch.zeros(3, 224, 224)
    obj = ready("a", image=b"\xff" * 1000)
    obj.inputs["image"] = image
    expected = 1000 + image.numel() * 4
    handlers = [ObjectModelHandler(ModelOptions()), ServerModelHandler("http://x")]
    for handler in handlers:
        assert handler.get_num_bytes([obj, obj]) == 2 * expected
        assert handler.batch_elements_kwargs()["element_size_fn"](obj) == 1


def test_decoding_processes_give_ib_ingest_the_same_vectors(stack, client, tmp_path):
    """Audio and video decoded in processes: the same objects as decoded in the worker."""
    from .test_ingest import copy_dataset, run_ingest
    from .test_ingest_incremental import snapshot

    tree = copy_dataset(tmp_path / "tree")
    failures = tmp_path / "f.jsonl"
    assert run_ingest(stack, tree, "InThreads", failures) == 0
    assert run_ingest(stack, tree, "InProcesses", failures, "--decode-processes", "2") == 0
    in_threads, in_processes = snapshot(client, "InThreads"), snapshot(client, "InProcesses")
    assert in_threads.keys() == in_processes.keys()
    for uuid, (properties, vector) in in_threads.items():
        assert in_processes[uuid][0]["source_id"] == properties["source_id"]
        np.testing.assert_allclose(in_processes[uuid][1], vector, atol=1e-5)
