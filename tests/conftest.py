"""Shared fixtures: the tiny parity model and its reference data."""

from __future__ import annotations

import json

import numpy as np
import pytest

from .fixture_data import FIXTURE, INPUTS


@pytest.fixture(scope="session")
def manifest() -> dict:
    return json.loads((FIXTURE / "manifest.json").read_text())["inputs"]


@pytest.fixture(scope="session")
def expected() -> dict[str, np.ndarray]:
    with np.load(FIXTURE / "expected.npz") as data:
        return {key: data[key] for key in data.files}


@pytest.fixture(scope="session")
def preprocessed() -> dict[str, np.ndarray]:
    with np.load(FIXTURE / "preprocessed.npz") as data:
        return {key: data[key] for key in data.files}


@pytest.fixture(scope="session")
def tiny_model():
    from ib_vectorizer.model import create_model

    return create_model(FIXTURE / "config.json", checkpoint=FIXTURE / "state_dict.pt")


@pytest.fixture(scope="session")
def texts() -> list[str]:
    return json.loads((INPUTS / "texts.json").read_text())
