"""Dynamic int8 for the CPU: the transformer trunks' matrix products in 8 bits.

Nearly all of ImageBind's arithmetic is in the trunks' Linear layers (attention
projections and MLPs). :func:`quantize_int8` replaces each with
:class:`Int8Linear`: weights rounded once to int8 with one scale per output
channel, activations quantized per call from their own range ("dynamic"), the
product computed by PyTorch's quantized CPU engine (fbgemm/oneDNN on x86,
QNNPACK on ARM). Stems, heads, norms and attention's softmax stay in float32,
so inputs and outputs are unchanged in type and shape.

Why the engine's ops and not torchao: torchao is where PyTorch's quantization
is maintained, but on the CPU its int8 dynamic path runs fast only under
``torch.compile``; eagerly it multiplies with ``torch._int_mm``, which took
15 s here for one imagebind_huge MLP product that float32 does in 0.17 s and
``torch.ops.quantized.linear_dynamic`` in 0.09 s. That op (fbgemm/oneDNN) is
what ``torch.ao.quantization.quantize_dynamic`` ends in; called directly it
prints no deprecation notice, but it belongs to the legacy stack PyTorch plans
to remove after torchao has replaced it. The torch version is pinned, and this
module is the one place to change then.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from .attention import MultiheadSelfAttention
from .transformer import Trunk

log = logging.getLogger(__name__)


def _reduce_range() -> bool:
    """x86 kernels accumulate u8×s8 pairs in 16 bits: 7-bit activations avoid overflow."""
    return torch.backends.quantized.engine in ("x86", "fbgemm")


class Int8Linear(nn.Module):
    """``y = x Wᵀ + b`` with W in int8 (per output channel) and x quantized per call.

    Built from a float Linear's weight and bias; holds only the packed int8
    weights (about a quarter of the float32 bytes). CPU only, float32 in and out.
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__()
        weight = weight.detach().to("cpu", torch.float32)
        self.in_features = weight.shape[1]
        self.out_features = weight.shape[0]
        scales = (weight.abs().amax(dim=1) / 127.0).clamp(min=1e-12).double()
        zero_points = torch.zeros(self.out_features, dtype=torch.long)
        quantized = torch.quantize_per_channel(weight, scales, zero_points, 0, torch.qint8)
        bias = None if bias is None else bias.detach().to("cpu", torch.float32)
        self._packed = torch.ops.quantized.linear_prepack(quantized, bias)
        self._reduce_range = _reduce_range()

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> Int8Linear:
        return cls(linear.weight, linear.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.quantized.linear_dynamic(x, self._packed, self._reduce_range)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8"


def quantize_int8(model: nn.Module) -> nn.Module:
    """Every trunk's Linear layers → :class:`Int8Linear`, in place; returns ``model``.

    The model must be on the CPU in float32 (the quantized engine's only
    inputs). Attention's packed ``in_proj_weight`` becomes an ``Int8Linear``
    too, so all four projections of each block run in int8.
    """
    first = next(model.parameters())
    if first.device.type != "cpu" or first.dtype != torch.float32:
        raise ValueError(
            f"int8 runs on the CPU in float32; this model is {first.dtype} on {first.device}"
            " (use --device cpu, or float16 on a GPU instead of int8)"
        )
    replaced = 0
    for trunk in (m for m in model.modules() if isinstance(m, Trunk)):
        for parent in list(trunk.modules()):
            if isinstance(parent, MultiheadSelfAttention) and parent.in_proj is None:
                parent.in_proj = Int8Linear(parent.in_proj_weight, parent.in_proj_bias)
                del parent.in_proj_weight, parent.in_proj_bias
                replaced += 1
            for name, child in list(parent.named_children()):
                if type(child) is nn.Linear:
                    setattr(parent, name, Int8Linear.from_linear(child))
                    replaced += 1
    engine = torch.backends.quantized.engine
    log.info("int8: %d Linear layers quantized (%s engine)", replaced, engine)
    return model
