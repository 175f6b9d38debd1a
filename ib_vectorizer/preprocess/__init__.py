"""Raw bytes → model input, for the input geometry of one model.

| modality | module           | one item becomes                    |
|----------|------------------|-------------------------------------|
| vision   | ``image.py``     | (3, S, S)                           |
| text     | ``text.py``      | (L,) token ids                      |
| audio    | ``audio.py``     | (3, 1, M, F): 3 clips               |
| video    | ``video.py``     | (15, 3, N, S, S): 5 clips × 3 crops |
| depth    | ``grayscale.py`` | (1, S, S)                           |
| thermal  | ``grayscale.py`` | (1, S, S)                           |
| imu      | ``imu.py``       | (6, T)                              |

S, L, M, F, N and T are the model config's ``image_size``, ``context_length``,
``audio_num_mel_bins``, ``audio_target_len``, ``video_frames`` and
``imu_samples`` (224, 77, 128, 204, 2 and 2000 for imagebind_huge), held by a
:class:`PreprocessConfig`. A :class:`Preprocessor` built for a model
(:meth:`Preprocessor.for_model`) turns items into exactly the inputs that model
takes.

Every module's loader takes the item's bytes (text: a string) and raises
:class:`~ib_vectorizer.errors.MediaError` with the reason; the preprocessor adds
the item's position (:class:`~ib_vectorizer.errors.InputError`). Before an item
is decoded, its header is read and what decoding it will cost is estimated
(:meth:`Preprocessor.inspect`, ``limits.py``): an item over a limit is refused
unread. Every model input that comes out is finite.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from ..errors import InputError, MediaError
from ..modalities import Modality
from .audio import MAX_AUDIO_SECONDS, audio_cost, load_audio
from .config import IMAGEBIND_HUGE, IMU_CHANNELS, PreprocessConfig
from .constants import AUDIO_CLIPS, VIDEO_CLIPS, VIDEO_CROPS
from .grayscale import load_depth, load_thermal, map_cost
from .image import image_cost, load_image, reduce_target
from .imu import imu_cost, load_imu
from .limits import MAX_ITEM_BYTES, DecodeLimits, ItemCost
from .text import load_text, text_cost
from .video import MAX_VIDEO_SECONDS, load_video, video_cost

if TYPE_CHECKING:
    from ..model.config import ImageBindConfig
    from ..options import ModelOptions


def check_items(items: object) -> None:
    """TypeError when ``items`` is one item (a str or bytes) where a list of items belongs:
    iterated, a text would be embedded as its characters and bytes as integers."""
    if isinstance(items, str | bytes | bytearray | memoryview):
        raise TypeError(
            "items must be a list (of texts or of bytes), "
            f"not a {type(items).__name__}: pass [item]"
        )


@dataclass(frozen=True)
class Preprocessor:
    """Turns raw items into model input of one geometry; the limits bound decoding work.

    Cheap to build and to pickle (it holds only sizes and limits), so a pipeline
    can ship it to its workers. A video longer than ``max_video_seconds`` is
    refused before it is decoded, an audio file as soon as decoding passes
    ``max_audio_seconds`` (None: no limit); any item whose decoding would need
    more than ``max_item_bytes`` of memory, by its header, is refused unread.
    """

    config: PreprocessConfig = IMAGEBIND_HUGE
    max_video_seconds: float | None = MAX_VIDEO_SECONDS
    max_audio_seconds: float | None = MAX_AUDIO_SECONDS
    image_decode: str = "exact"  # or "fast": JPEGs decoded at a reduced scale (see image.py)
    max_item_bytes: int = MAX_ITEM_BYTES

    def __post_init__(self) -> None:
        reduce_target(self.image_decode, self.config.image_size)  # refuses an unknown mode

    @classmethod
    def for_model(
        cls,
        model_config: ImageBindConfig,
        *,
        max_video_seconds: float | None = MAX_VIDEO_SECONDS,
        max_audio_seconds: float | None = MAX_AUDIO_SECONDS,
        image_decode: str = "exact",
        max_item_bytes: int = MAX_ITEM_BYTES,
    ) -> Preprocessor:
        """The preprocessor of a model; ValueError names each config field it cannot follow."""
        return cls(
            PreprocessConfig.from_model(model_config),
            max_video_seconds=max_video_seconds,
            max_audio_seconds=max_audio_seconds,
            image_decode=image_decode,
            max_item_bytes=max_item_bytes,
        )

    @classmethod
    def from_options(cls, options: ModelOptions, **limits: float | None) -> Preprocessor:
        """The preprocessor of the model ``options`` describe, with their decoding settings
        (``limits``: ``max_video_seconds``/``max_audio_seconds``); no weights are read."""
        return cls.for_model(
            options.config(),
            image_decode=options.image_decode,
            max_item_bytes=options.max_item_bytes,
            **limits,
        )

    def inspect(self, modality: Modality | str, item: bytes | str, index: int = 0) -> ItemCost:
        """What decoding one item will cost, from its header; :class:`InputError` when the
        header breaks a limit or the cost is over ``max_item_bytes``."""
        modality = Modality.of(modality)
        try:
            cost = self._cost(modality, item)
            cost.check(self.max_item_bytes)
        except MediaError as err:
            raise InputError(modality.value, index, str(err), err) from None
        return cost

    def load_item(
        self,
        modality: Modality | str,
        item: bytes | str,
        index: int = 0,
        deadline: float | None = None,
        inspected: bool = False,
    ) -> torch.Tensor:
        """One item → model input, or :class:`InputError` naming ``modality[index]`` and why.

        The item is inspected first (:meth:`inspect`), unless the caller just
        did (``inspected``). Past ``deadline`` (``time.monotonic()``), audio and
        video decoding stop with :class:`~ib_vectorizer.errors.DeadlinePassed`.
        """
        modality = Modality.of(modality)
        if not inspected:
            self.inspect(modality, item, index)
        limits = DecodeLimits(self.max_item_bytes, deadline)
        try:
            tensor = self._load(modality, item, limits)
            if tensor.is_floating_point() and not torch.isfinite(tensor).all():
                raise MediaError(f"its {modality.value} input is not finite (NaN or infinite)")
        except MediaError as err:
            raise InputError(modality.value, index, str(err), err) from None
        return tensor

    def load_batch(
        self, modality: Modality | str, items: Sequence[bytes | str], first_index: int = 0
    ) -> torch.Tensor:
        """All items stacked; the first bad one raises :class:`InputError`.

        ``first_index`` is the position of ``items[0]`` in the caller's whole list,
        so errors name the item as the caller knows it. ``items`` is a list: one bare
        str or bytes is a TypeError.
        """
        check_items(items)
        return torch.stack(
            [
                self.load_item(modality, item, first_index + offset)
                for offset, item in enumerate(items)
            ]
        )

    def item_shape(self, modality: Modality | str) -> tuple[int, ...]:
        """The shape of one preprocessed item of ``modality``."""
        c = self.config
        size = c.image_size
        return {
            Modality.VISION: (3, size, size),
            Modality.TEXT: (c.context_length,),
            Modality.AUDIO: (AUDIO_CLIPS, 1, c.audio_num_mel_bins, c.audio_target_len),
            Modality.VIDEO: (VIDEO_CLIPS * VIDEO_CROPS, 3, c.video_frames, size, size),
            Modality.DEPTH: (1, size, size),
            Modality.THERMAL: (1, size, size),
            Modality.IMU: (IMU_CHANNELS, c.imu_samples),
        }[Modality.of(modality)]

    def item_bytes(self, modality: Modality | str) -> int:
        """What one preprocessed item of ``modality`` takes in memory."""
        element = 8 if Modality.of(modality) is Modality.TEXT else 4
        return element * math.prod(self.item_shape(modality))

    def example_batch(self, modality: Modality | str, batch: int = 1) -> torch.Tensor:
        """Zeros shaped like ``batch`` preprocessed items, for warming up kernels."""
        modality = Modality.of(modality)
        dtype = torch.int64 if modality is Modality.TEXT else torch.float32
        return torch.zeros(batch, *self.item_shape(modality), dtype=dtype)

    def _cost(self, modality: Modality, item: bytes | str) -> ItemCost:
        size = self.config.image_size
        if modality is Modality.VISION:
            return image_cost(item, size, self.image_decode)
        if modality is Modality.TEXT:
            return text_cost(item, self.config.context_length)
        if modality is Modality.AUDIO:
            return audio_cost(item, self.max_audio_seconds)
        if modality is Modality.VIDEO:
            return video_cost(item, self.max_video_seconds)
        if modality is Modality.DEPTH:
            return map_cost(item, "depth", size, self.image_decode)
        if modality is Modality.THERMAL:
            return map_cost(item, "thermal", size, self.image_decode)
        return imu_cost(item)

    def _load(self, modality: Modality, item: bytes | str, limits: DecodeLimits) -> torch.Tensor:
        c = self.config
        if modality is Modality.VISION:
            return load_image(item, c.image_size, self.image_decode)
        if modality is Modality.TEXT:
            return load_text(item, c.context_length)
        if modality is Modality.AUDIO:
            return load_audio(
                item, self.max_audio_seconds, c.audio_num_mel_bins, c.audio_target_len, limits
            )
        if modality is Modality.VIDEO:
            return load_video(item, self.max_video_seconds, c.image_size, c.video_frames, limits)
        if modality is Modality.DEPTH:
            return load_depth(item, c.image_size, self.image_decode)
        if modality is Modality.THERMAL:
            return load_thermal(item, c.image_size, self.image_decode)
        return load_imu(item, c.imu_samples)


__all__ = [
    "MAX_AUDIO_SECONDS",
    "MAX_VIDEO_SECONDS",
    "PreprocessConfig",
    "Preprocessor",
    "check_items",
]
