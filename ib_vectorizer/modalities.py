"""The seven input kinds and the encoders behind them, with the names users give them."""

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

    @property
    def label(self) -> str:
        """The name users see: ``image`` for vision, else the value.

        It names folders and columns in ``ib-ingest``, ``--near-image`` in
        ``ib-query``, benchmark mixes, and Weaviate's media types.
        """
        return "image" if self is Modality.VISION else self.value

    @classmethod
    def parse(cls, name: str) -> Modality:
        """A modality from a name users write: ``image``, ``images``, ``vision``, ``texts``, ..."""
        key = name.strip().lower()
        found = _BY_NAME.get(key)
        if found is None:
            labels = ", ".join(m.label for m in cls)
            raise ValueError(f"unknown modality {name!r}: expected one of {labels} (or vision)")
        return found


_BY_NAME: dict[str, Modality] = {
    **{m.value: m for m in Modality},
    **{m.label: m for m in Modality},
    "images": Modality.VISION,
    "texts": Modality.TEXT,
}
