"""Input stems: raw model input → a sequence of tokens with CLS and positions.

Attribute names (``rgbt_stem``, ``pos_embedding_helper``, ...) follow the
checkpoint's keys so Meta's weights load with ``strict=True``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

STEM_LN_EPS = 1e-5  # PyTorch's default, as in the stems of the trained model


class RepeatFrames(nn.Module):
    """A still image (B, C, H, W) becomes a clip of ``frames`` identical frames."""

    def __init__(self, frames: int) -> None:
        super().__init__()
        self.frames = frames

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 4:
            x = x.unsqueeze(2).expand(-1, -1, self.frames, -1, -1)
        return x


class PatchStem(nn.Module):
    """Patch projection (``proj``), flattened to tokens, then an optional LayerNorm."""

    def __init__(self, proj: nn.Module, norm_dim: int | None = None) -> None:
        super().__init__()
        self.proj = proj
        self.norm_layer = nn.LayerNorm(norm_dim, eps=STEM_LN_EPS) if norm_dim else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj(x).flatten(2).transpose(1, 2)  # (B, D, *grid) → (B, tokens, D)
        return self.norm_layer(x) if self.norm_layer is not None else x


class FramePatchStem(PatchStem):
    """Vision: ``RepeatFrames`` then a Conv3d whose kernel spans the clip's frames.

    A still image becomes identical frames, and a kernel spanning identical
    frames is a 2-D kernel summed over time: the image goes through that 2-D
    conv instead (half the multiply-adds, no copy of the image per frame; equal
    to the 3-D conv up to float rounding). Clips take the 3-D conv.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        repeat, conv = self.proj
        if x.ndim == 4 and conv.kernel_size[0] == conv.stride[0] == repeat.frames:
            weight = conv.weight.float().sum(dim=2).to(conv.weight.dtype)
            x = F.conv2d(x, weight, conv.bias, stride=conv.stride[1:]).flatten(2).transpose(1, 2)
            return self.norm_layer(x) if self.norm_layer is not None else x
        return super().forward(x)


class IMUStem(PatchStem):
    """Windows of ``kernel`` samples, flattened channel-major, through a Linear."""

    def __init__(self, channels: int, kernel: int, dim: int) -> None:
        super().__init__(nn.Linear(channels * kernel, dim, bias=False), norm_dim=dim)
        self.kernel = kernel

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, channels, _ = x.shape
        windows = x.unfold(-1, self.kernel, self.kernel)  # (B, C, W, k)
        tokens = windows.permute(0, 2, 1, 3).reshape(batch, -1, channels * self.kernel)
        tokens = self.proj(tokens)
        return self.norm_layer(tokens)


class PositionalEmbedding(nn.Module):
    def __init__(self, tokens: int, dim: int) -> None:
        super().__init__()
        self.pos_embed = nn.Parameter(torch.empty(1, tokens, dim))


class PatchEmbedding(nn.Module):
    """``stem`` → prepend CLS → add positions. Used by every modality but text.

    ``stem_name`` is the checkpoint's name for the stem; the IMU keeps its
    positional table directly on this module (``own_pos_embed``).
    """

    def __init__(
        self,
        stem_name: str,
        stem: PatchStem,
        num_patches: int,
        dim: int,
        own_pos_embed: bool = False,
    ) -> None:
        super().__init__()
        self.stem_name = stem_name
        self.add_module(stem_name, stem)
        self.cls_token = nn.Parameter(torch.empty(1, 1, dim))
        if own_pos_embed:
            self.pos_embed = nn.Parameter(torch.empty(1, num_patches + 1, dim))
        else:
            self.pos_embedding_helper = PositionalEmbedding(num_patches + 1, dim)

    @property
    def positions(self) -> torch.Tensor:
        helper = getattr(self, "pos_embedding_helper", None)
        return helper.pos_embed if helper is not None else self.pos_embed

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = getattr(self, self.stem_name)(x)
        cls = self.cls_token.to(tokens.dtype).expand(tokens.shape[0], -1, -1)
        return torch.cat([cls, tokens], dim=1) + self.positions.to(tokens.dtype)


class TextEmbedding(nn.Module):
    """Token ids (B, 77) → token vectors plus positions. No CLS: the EOT token is pooled."""

    def __init__(self, vocab_size: int, context_length: int, dim: int) -> None:
        super().__init__()
        self.token_embedding = nn.Embedding(vocab_size, dim)
        self.pos_embed = nn.Parameter(torch.empty(1, context_length, dim))
        # Stored in the checkpoint; the trunk applies the same causal rule via SDPA.
        causal = torch.full((context_length, context_length), float("-inf")).triu(1)
        self.register_buffer("mask", causal)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.token_embedding(ids) + self.pos_embed
