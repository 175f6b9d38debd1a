"""A client of our inference server's ``/vectorize`` (Weaviate's multi2vec-bind protocol).

``ib-ingest --embed server`` sends its batches through it, and ``ib-query``
the items of a composed query, whose vectors it adds before searching.
"""

from __future__ import annotations

import base64
import contextlib
import json
import urllib.error
import urllib.request

import numpy as np

from ib_vectorizer.modalities import Modality
from ib_vectorizer.serving.protocol import RESPONSE_KEYS, WIRE_NAME


class VectorizerError(Exception):
    """An answer other than 200 (``status`` 0: no answer at all)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def post_vectorize(url: str, payload: dict, timeout: float = 300.0) -> dict:
    """One ``/vectorize`` request; any failure is a :class:`VectorizerError`."""
    request = urllib.request.Request(
        f"{url.rstrip('/')}/vectorize",
        data=json.dumps(payload).encode(),
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as err:
        message = err.read().decode(errors="replace")
        with contextlib.suppress(json.JSONDecodeError, AttributeError):
            message = json.loads(message).get("error", message)
        raise VectorizerError(err.code, message) from None
    except OSError as err:
        raise VectorizerError(0, f"vectorizer at {url} unreachable: {err}") from None


def vectorize_one(url: str, modality: Modality, content: bytes | str) -> np.ndarray:
    """The server's unit vector of one item: text as str, media as bytes."""
    item = content if isinstance(content, str) else base64.b64encode(content).decode("ascii")
    answer = post_vectorize(url, {WIRE_NAME[modality]: [item]})
    return np.asarray(answer[RESPONSE_KEYS[modality]][0], dtype=np.float32)
