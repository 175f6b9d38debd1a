"""Pre-norm transformer blocks and the per-modality trunk."""

from __future__ import annotations

import torch
from torch import nn

from .attention import MultiheadSelfAttention

# Every LayerNorm inside trunks and heads; the stems' LayerNorms use PyTorch's 1e-5.
TRUNK_LN_EPS = 1e-6


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()  # exact (erf) GELU, as trained
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """``x + attn(LN(x))`` then ``x + mlp(LN(x))``. Drop-path is training-only and omitted."""

    def __init__(self, dim: int, num_heads: int, add_bias_kv: bool, mlp_ratio: int = 4) -> None:
        super().__init__()
        self.norm_1 = nn.LayerNorm(dim, eps=TRUNK_LN_EPS)
        self.attn = MultiheadSelfAttention(dim, num_heads, add_bias_kv)
        self.norm_2 = nn.LayerNorm(dim, eps=TRUNK_LN_EPS)
        self.mlp = Mlp(dim, dim * mlp_ratio)

    def forward(self, x: torch.Tensor, causal: bool = False) -> torch.Tensor:
        x = x + self.attn(self.norm_1(x), causal=causal)
        return x + self.mlp(self.norm_2(x))


class Trunk(nn.Module):
    """A stack of blocks; vision alone normalises its tokens before the first block."""

    def __init__(
        self,
        dim: int,
        num_blocks: int,
        num_heads: int,
        add_bias_kv: bool,
        pre_norm: bool = False,
        causal: bool = False,
    ) -> None:
        super().__init__()
        self.causal = causal
        # A Sequential so the checkpoint key reads `pre_transformer_layer.0.weight`.
        self.pre_transformer_layer = (
            nn.Sequential(nn.LayerNorm(dim, eps=TRUNK_LN_EPS)) if pre_norm else nn.Identity()
        )
        self.blocks = nn.ModuleList(Block(dim, num_heads, add_bias_kv) for _ in range(num_blocks))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pre_transformer_layer(x)
        for block in self.blocks:
            x = block(x, causal=self.causal)
        return x
