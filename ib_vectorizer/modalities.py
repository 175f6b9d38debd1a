"""The seven input kinds and the encoders behind them, with the names users give them."""

from __future__ import annotations

import argparse
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

    @classmethod
    def of(cls, value: Modality | str) -> Modality:
        """A caller's modality: a :class:`Modality` as it is, a name as :meth:`parse` reads it.

        What every public entry point that takes a modality calls on it, so
        ``"image"``, ``"vision"`` and ``Modality.VISION`` are one modality, and
        an unknown name is a ValueError listing the valid ones.
        """
        if isinstance(value, cls):
            return value
        if not isinstance(value, str):
            raise TypeError(f"a modality is a Modality or its name, not a {type(value).__name__}")
        return cls.parse(value)


def modality_arg(name: str) -> Modality:
    """argparse ``type=`` of a modality flag: an unknown name is a usage error listing the
    valid names (argparse shows only an ArgumentTypeError's own message)."""
    try:
        return Modality.parse(name)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


MODALITY_METAVAR = "{" + ",".join(m.label for m in Modality) + "}"
"""How help shows a modality flag's values: the names users write (``image``, not ``vision``)."""


_BY_NAME: dict[str, Modality] = {
    **{m.value: m for m in Modality},
    **{m.label: m for m in Modality},
    "images": Modality.VISION,
    "texts": Modality.TEXT,
}
