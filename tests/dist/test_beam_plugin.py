"""The Beam plugin's runnable examples (``examples/beam/``) on a real Flink cluster.

The same scripts and checks as ``tests/test_beam_examples.py``, with the
flags ``ib-runner`` prints for the cluster: the workers are separate SDK
processes, so every piece must pickle and load its model and its client on
its own.
"""

from __future__ import annotations

import pytest

from ..test_beam_examples import check_embed_audio, check_enrich_queries, check_rag_ingest
from ..test_ingest import copy_dataset
from ..test_ingest import run_ingest as ingest_directory
from .conftest import engine_cluster, flags


@pytest.fixture(scope="module")
def flink(tmp_path_factory):
    yield from engine_cluster("flink", tmp_path_factory)


def test_embed_audio_on_flink(flink, tmp_path):
    check_embed_audio(tmp_path, tuple(flags(flink)))


def test_rag_ingest_on_flink(flink, stack, client, tmp_path):
    check_rag_ingest(stack, client, tmp_path, "FlinkRag", tuple(flags(flink)))


def test_enrich_queries_on_flink(flink, stack, capsys, tmp_path):
    tree = copy_dataset(tmp_path / "tree")
    assert ingest_directory(stack, tree, "FlinkMedia", tmp_path / "f.jsonl") == 0
    check_enrich_queries(stack, capsys, tmp_path, "FlinkMedia", tuple(flags(flink)))
