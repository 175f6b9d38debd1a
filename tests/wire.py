"""Weaviate's multi2vec-bind wire format, as the tests speak it to a running server."""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request
from pathlib import Path

from .fixture_data import INPUTS

RESPONSE_KEYS = [
    "textVectors",
    "imageVectors",
    "audioVectors",
    "videoVectors",
    "imuVectors",
    "thermalVectors",
    "depthVectors",
]
# request key → (fixture manifest modality, response key)
WIRE = {
    "texts": ("text", "textVectors"),
    "images": ("vision", "imageVectors"),
    "audio": ("audio", "audioVectors"),
    "video": ("video", "videoVectors"),
    "imu": ("imu", "imuVectors"),
    "thermal": ("thermal", "thermalVectors"),
    "depth": ("depth", "depthVectors"),
}


def b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def post(url: str, body: bytes | dict, headers: dict | None = None, timeout: float = 120):
    """(status, parsed JSON body, headers) of a POST /vectorize."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(
        url + "/vectorize",
        data=data,
        method="POST",
        headers={"Content-Type": "application/json", **(headers or {})},
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read()), dict(response.headers)
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read()), dict(err.headers)


def fixture_wire_items(manifest: dict, texts: list[str]) -> dict[str, list[str]]:
    """Every fixture input in its request list, in the manifest's order."""
    items = {"texts": texts}
    for key, (modality, _) in WIRE.items():
        if key != "texts":
            items[key] = [b64(INPUTS / name) for name in manifest[modality]]
    return items
