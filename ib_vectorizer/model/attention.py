"""Multi-head self-attention with the parameter layout of ``torch.nn.MultiheadAttention``.

The checkpoint stores packed ``in_proj_weight``/``in_proj_bias`` and, for audio,
depth, thermal and IMU, a learned extra key/value (``bias_k``/``bias_v``) that
every query can attend to. The arithmetic runs through
``scaled_dot_product_attention`` so GPUs use their fused kernels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class MultiheadSelfAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int, add_bias_kv: bool = False) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"width {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * dim, dim))
        self.in_proj_bias = nn.Parameter(torch.empty(3 * dim))
        # int8 (see quantize.py) replaces the two parameters above with a packed layer.
        self.in_proj: nn.Module | None = None
        self.out_proj = nn.Linear(dim, dim)
        if add_bias_kv:
            self.bias_k = nn.Parameter(torch.empty(1, 1, dim))
            self.bias_v = nn.Parameter(torch.empty(1, 1, dim))
        else:
            self.register_parameter("bias_k", None)
            self.register_parameter("bias_v", None)

    def forward(self, x: torch.Tensor, causal: bool = False) -> torch.Tensor:
        """``x``: (batch, tokens, dim). ``causal``: each token sees only itself and earlier ones."""
        batch, tokens, dim = x.shape
        if self.in_proj is None:
            qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias)
        else:
            qkv = self.in_proj(x)
        q, k, v = qkv.chunk(3, dim=-1)
        if self.bias_k is not None:
            if causal:
                raise ValueError("causal attention with a learned extra key/value is not defined")
            # One more key/value position, already in projected space, shared by all queries.
            k = torch.cat([k, self.bias_k.to(k.dtype).expand(batch, 1, dim)], dim=1)
            v = torch.cat([v, self.bias_v.to(v.dtype).expand(batch, 1, dim)], dim=1)
        q, k, v = (self._split_heads(t) for t in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
        out = out.transpose(1, 2).reshape(batch, tokens, dim)
        return self.out_proj(out)

    def _split_heads(self, t: torch.Tensor) -> torch.Tensor:
        batch, tokens, dim = t.shape
        return t.view(batch, tokens, self.num_heads, dim // self.num_heads).transpose(1, 2)
