"""Raw bytes → model input, one module per modality.

| modality | module          | one item becomes            |
|----------|-----------------|-----------------------------|
| vision   | ``image.py``    | (3, 224, 224)               |
| text     | ``text.py``     | (77,) token ids             |
| audio    | ``audio.py``    | (3, 1, 128, 204): 3 clips   |
| video    | ``video.py``    | (15, 3, 2, 224, 224): views |
| depth    | ``grayscale.py``| (1, 224, 224)               |
| thermal  | ``grayscale.py``| (1, 224, 224)               |
| imu      | ``imu.py``      | (6, 2000)                   |

Every loader takes the item's bytes (text: a string) and raises
:class:`~ib_vectorizer.errors.MediaError` with the reason; the functions here
add the item's position (:class:`~ib_vectorizer.errors.InputError`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial

import torch

from ..errors import InputError, MediaError
from ..modalities import Modality
from .audio import load_audio
from .grayscale import load_depth, load_thermal
from .image import load_image
from .imu import load_imu
from .text import load_text
from .video import load_video

Loader = Callable[[bytes], torch.Tensor]

LOADERS: dict[Modality, Loader] = {
    Modality.VISION: load_image,
    Modality.TEXT: load_text,
    Modality.AUDIO: load_audio,
    Modality.VIDEO: load_video,
    Modality.DEPTH: load_depth,
    Modality.THERMAL: load_thermal,
    Modality.IMU: load_imu,
}


def loader_for(
    modality: Modality | str,
    max_video_seconds: float | None = None,
    max_audio_seconds: float | None = None,
) -> Loader:
    """The loader of ``modality``, with limits that bound decoding work and memory."""
    modality = Modality(modality)
    if modality is Modality.VIDEO and max_video_seconds is not None:
        return partial(load_video, max_seconds=max_video_seconds)
    if modality is Modality.AUDIO and max_audio_seconds is not None:
        return partial(load_audio, max_seconds=max_audio_seconds)
    return LOADERS[modality]


def load_item(
    modality: Modality | str, item: bytes | str, index: int = 0, loader: Loader | None = None
) -> torch.Tensor:
    """One item → model input, or :class:`InputError` naming ``modality[index]`` and why."""
    modality = Modality(modality)
    try:
        return (loader or LOADERS[modality])(item)
    except MediaError as err:
        raise InputError(modality.value, index, str(err)) from None


def load_batch(
    modality: Modality | str,
    items: Sequence[bytes | str],
    loader: Loader | None = None,
    first_index: int = 0,
) -> torch.Tensor:
    """All items stacked; the first bad one raises :class:`InputError`.

    ``first_index`` is the position of ``items[0]`` in the caller's whole list,
    so errors name the item as the caller knows it.
    """
    return torch.stack(
        [
            load_item(modality, item, first_index + offset, loader)
            for offset, item in enumerate(items)
        ]
    )


__all__ = ["LOADERS", "Loader", "load_batch", "load_item", "loader_for"]
