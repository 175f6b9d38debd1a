"""Text → 77 CLIP BPE token ids, with the end-of-text token kept on long texts.

The vocabulary and cleaning (ftfy, HTML unescape, whitespace collapsed,
lower-case) are open_clip's, the same the model was trained with. A text
longer than 75 tokens is cut and its last position set to EOT, so the head
pools the EOT token as in training (older ImageBind code dropped it).
"""

from __future__ import annotations

from functools import cache

import torch

from ..errors import MediaError
from .constants import CONTEXT_LENGTH


@cache
def clip_tokenizer():
    """open_clip's byte-level BPE tokenizer with its bundled vocabulary (built once)."""
    from open_clip.tokenizer import SimpleTokenizer

    return SimpleTokenizer(context_length=CONTEXT_LENGTH)


def load_text(text: str) -> torch.Tensor:
    """One text → int64 (77,) token ids: SOT, tokens, EOT, zero padding."""
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError:
            raise MediaError("text is not valid UTF-8") from None
    if not isinstance(text, str):
        raise MediaError(f"text must be a string, not {type(text).__name__}")
    return clip_tokenizer()([text])[0].to(torch.int64)
