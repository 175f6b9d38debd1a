"""The seven input kinds and the six encoders behind them."""

from __future__ import annotations

from enum import StrEnum


class Modality(StrEnum):
    """What a user hands in. Video is embedded by the vision encoder."""

    VISION = "vision"
    TEXT = "text"
    AUDIO = "audio"
    VIDEO = "video"
    DEPTH = "depth"
    THERMAL = "thermal"
    IMU = "imu"

    @property
    def encoder(self) -> str:
        """Name of the encoder (and checkpoint key prefix) that embeds this input."""
        return "vision" if self is Modality.VIDEO else self.value

    @property
    def views_per_item(self) -> int:
        """How many encoder passes one item costs (clips × crops), for batch sizing."""
        return {Modality.AUDIO: 3, Modality.VIDEO: 15}.get(self, 1)


ENCODERS: tuple[str, ...] = ("vision", "text", "audio", "depth", "thermal", "imu")
