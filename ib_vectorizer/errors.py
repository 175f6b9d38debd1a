"""Errors that name the bad item, so one bad input never fails the others."""

from __future__ import annotations


class MediaError(ValueError):
    """One item's bytes could not be turned into model input.

    Raised by the per-modality loaders with just the reason; callers that know
    the item's position wrap it in :class:`InputError`.
    """


class MediaTooLong(MediaError):
    """An audio or video item is longer than the length decoded whole."""


class DeadlinePassed(Exception):
    """Decoding stopped because the item's request stopped waiting for it (not the item's fault)."""


class InputError(ValueError):
    """Item ``index`` of ``modality`` is unusable, for ``reason``.

    ``str(err)`` reads ``audio[2]: not a decodable audio file``; the fields stay
    available so an HTTP layer can use its own names (``images[3]``) and a
    pipeline can dead-letter exactly that item.
    """

    def __init__(
        self, modality: str, index: int, reason: str, cause: MediaError | None = None
    ) -> None:
        self.modality = modality
        self.index = index
        self.reason = reason
        self.cause = cause  # the loader's error, for callers that act on its kind
        super().__init__(f"{modality}[{index}]: {reason}")

    def __reduce__(self):  # so it crosses process boundaries with its fields
        return type(self), (self.modality, self.index, self.reason, self.cause)


def unexpected_failure(err: BaseException, doing: str) -> str:
    """One sentence for an error no rule foresaw, for a dead letter or a log line.

    ``unexpected_failure(MemoryError(), "decoding it")`` reads "decoding it ran
    out of memory"; anything else "decoding it failed unexpectedly (KeyError:
    'x')", with the first line of the message only.
    """
    if isinstance(err, MemoryError):
        return f"{doing} ran out of memory"
    lines = str(err).strip().splitlines()
    detail = f"{type(err).__name__}: {lines[0]}" if lines else type(err).__name__
    return f"{doing} failed unexpectedly ({detail})"
