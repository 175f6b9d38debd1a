"""Text → ``context_length`` (77) CLIP BPE token ids, the end-of-text token kept on long texts.

The vocabulary and cleaning (ftfy, HTML unescape, whitespace collapsed,
lower-case) are open_clip's, the same the model was trained with. A text whose
tokens do not fit is cut and its last position set to EOT, so the head pools
the EOT token as in training (older ImageBind code dropped it).
"""

from __future__ import annotations

import re
import threading
from functools import cache

import torch

from ..errors import MediaError
from .config import IMAGEBIND_HUGE
from .limits import ItemCost


@cache
def clip_tokenizer():
    """open_clip's byte-level BPE tokenizer with its bundled vocabulary (built once).

    One tokenizer serves every context length: the length is given per call.
    """
    from open_clip.tokenizer import SimpleTokenizer

    return SimpleTokenizer()


# BPE work grows with the square of a word's length, but only the first
# ``context_length - 1`` tokens are kept: runs of whitespace are collapsed (as
# the cleaning does anyway) and the text is cut to a length no real tokens
# reach: 26 characters per token position, and never less than MAX_TEXT_CHARS.
MAX_TEXT_CHARS = 2048
TEXT_CHARS_PER_TOKEN = 26
# The tokenizer caches every word it has seen; a server would grow without bound.
MAX_CACHED_WORDS = 100_000
_WORD = re.compile(r"\S+")
_tokenizer_lock = threading.Lock()  # the cache is a plain dict shared by decode threads


def max_text_chars(context_length: int) -> int:
    """How much of a (whitespace-collapsed) text can matter for ``context_length`` tokens."""
    return max(MAX_TEXT_CHARS, TEXT_CHARS_PER_TOKEN * context_length)


def text_cost(text: str | bytes, context_length: int = IMAGEBIND_HUGE.context_length) -> ItemCost:
    """What tokenizing takes: a UTF-8 copy of the text (bytes given), the part read, the tokens."""
    copy = len(text) * 4 if isinstance(text, bytes) else 0
    return ItemCost(copy + 8 * max_text_chars(context_length) + 8 * context_length, "a text")


def collapse_whitespace(text: str, limit: int) -> str:
    r"""``re.sub(r"\s+", " ", text)[:limit]``, reading no further into ``text`` than it needs."""
    parts = [" "] if text[:1].isspace() else []
    size = len(parts)
    for match in _WORD.finditer(text):
        if size >= limit:
            break
        if size and parts[-1] != " ":
            parts.append(" ")
            size += 1
        parts.append(match.group())
        size += len(parts[-1])
    else:
        if text[-1:].isspace() and parts and parts[-1] != " ":
            parts.append(" ")
    return "".join(parts)[:limit]


def load_text(text: str, context_length: int = IMAGEBIND_HUGE.context_length) -> torch.Tensor:
    """One text → int64 (context_length,) token ids: SOT, tokens, EOT, zero padding."""
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError:
            raise MediaError("text is not valid UTF-8") from None
    if not isinstance(text, str):
        raise MediaError(f"text must be a string, not {type(text).__name__}")
    text = collapse_whitespace(text, max_text_chars(context_length))
    tokenizer = clip_tokenizer()
    with _tokenizer_lock:
        ids = tokenizer([text], context_length=context_length)[0]
        if len(tokenizer.cache) > MAX_CACHED_WORDS:
            tokenizer.cache.clear()
    return ids.to(torch.int64)
