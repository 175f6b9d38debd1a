"""The ``multi2vec-bind`` wire names, shared by the server and the benchmark client.

Request keys and response keys in the order Weaviate's Go client declares them.
"""

from __future__ import annotations

from ..modalities import Modality

REQUEST_KEYS: dict[str, Modality] = {
    "texts": Modality.TEXT,
    "images": Modality.VISION,
    "audio": Modality.AUDIO,
    "video": Modality.VIDEO,
    "imu": Modality.IMU,
    "thermal": Modality.THERMAL,
    "depth": Modality.DEPTH,
}
RESPONSE_KEYS: dict[Modality, str] = {
    Modality.TEXT: "textVectors",
    Modality.VISION: "imageVectors",
    Modality.AUDIO: "audioVectors",
    Modality.VIDEO: "videoVectors",
    Modality.IMU: "imuVectors",
    Modality.THERMAL: "thermalVectors",
    Modality.DEPTH: "depthVectors",
}
WIRE_NAME: dict[Modality, str] = {modality: key for key, modality in REQUEST_KEYS.items()}
