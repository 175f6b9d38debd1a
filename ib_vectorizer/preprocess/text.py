"""Text → 77 CLIP BPE token ids, with the end-of-text token kept on long texts.

The vocabulary and cleaning (ftfy, HTML unescape, whitespace collapsed,
lower-case) are open_clip's, the same the model was trained with. A text
longer than 75 tokens is cut and its last position set to EOT, so the head
pools the EOT token as in training (older ImageBind code dropped it).
"""

from __future__ import annotations

import re
import threading
from functools import cache

import torch

from ..errors import MediaError
from .constants import CONTEXT_LENGTH


@cache
def clip_tokenizer():
    """open_clip's byte-level BPE tokenizer with its bundled vocabulary (built once)."""
    from open_clip.tokenizer import SimpleTokenizer

    return SimpleTokenizer(context_length=CONTEXT_LENGTH)


# BPE work grows with the square of a word's length, but only the first 76
# tokens are kept: runs of whitespace are collapsed (as the cleaning does anyway)
# and the text is cut to a length no real 76 tokens reach (27+ characters each).
MAX_TEXT_CHARS = 2048
# The tokenizer caches every word it has seen; a server would grow without bound.
MAX_CACHED_WORDS = 100_000
_WHITESPACE = re.compile(r"\s+")
_tokenizer_lock = threading.Lock()  # the cache is a plain dict shared by decode threads


def load_text(text: str) -> torch.Tensor:
    """One text → int64 (77,) token ids: SOT, tokens, EOT, zero padding."""
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError:
            raise MediaError("text is not valid UTF-8") from None
    if not isinstance(text, str):
        raise MediaError(f"text must be a string, not {type(text).__name__}")
    text = _WHITESPACE.sub(" ", text)[:MAX_TEXT_CHARS]
    tokenizer = clip_tokenizer()
    with _tokenizer_lock:
        ids = tokenizer([text])[0]
        if len(tokenizer.cache) > MAX_CACHED_WORDS:
            tokenizer.cache.clear()
    return ids.to(torch.int64)
