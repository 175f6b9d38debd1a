"""The container tests run against images built here, once per session (`make docker-test`)."""

from __future__ import annotations

import pytest

from ..fixture_data import FIXTURE
from . import provision

# The fixture model mounted where the image keeps weights; the server reads it from there.
FIXTURE_MOUNT = ("-v", f"{FIXTURE}:/models:ro")
FIXTURE_ENV = {
    "IB_MODEL": "/models/config.json",
    "IB_CHECKPOINT": "/models/state_dict.pt",
    "ENABLE_CUDA": "0",  # the cuda image on a machine without a GPU
}


def env_flags(env: dict[str, str]) -> list[str]:
    return [word for name, value in env.items() for word in ("-e", f"{name}={value}")]


@pytest.fixture(scope="session")
def image() -> str:
    """``ib-vectorizer:cuda`` built from docker/Dockerfile (a no-op rebuild when cached)."""
    return provision.provision_all().tag


@pytest.fixture(scope="session")
def worker_image(image) -> str:
    """Beam's SDK worker image (the beam-worker target), which provisioning builds too."""
    assert provision.inspect("image", provision.WORKER_IMAGE), provision.WORKER_IMAGE
    return provision.WORKER_IMAGE
