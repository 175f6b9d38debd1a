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

Quantizing imagebind_huge at load takes seconds (rounding 4.4 GB of float32
weights, then packing them for the engine), more than int8 saves on a few
items; :class:`Int8Cache` keeps the rounded weights beside the checkpoint, so
later loads only pack them.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from torch import nn

from .attention import MultiheadSelfAttention
from .transformer import Trunk

log = logging.getLogger(__name__)

#: The int8 file's layout and rounding: a kept file of another format is made again.
INT8_FORMAT = 1
#: Checkpoints from this size on get their int8 weights kept: smaller ones quantize in
#: well under a second (imagebind_huge's 4.8 GB take seconds).
KEEP_FROM_BYTES = 256 << 20
_SAMPLED_BLOCKS = 16
_SAMPLED_BLOCK_BYTES = 64 << 10


def _reduce_range() -> bool:
    """x86 kernels accumulate u8×s8 pairs in 16 bits: 7-bit activations avoid overflow."""
    return torch.backends.quantized.engine in ("x86", "fbgemm")


class Int8Linear(nn.Module):
    """``y = x Wᵀ + b`` with W in int8 (per output channel) and x quantized per call.

    Built from a per-channel ``qint8`` weight (:meth:`quantize` rounds a float
    one, :meth:`from_int8` takes kept int8 values and scales); holds only the
    packed int8 weights (about a quarter of the float32 bytes). CPU only,
    float32 in and out.
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.out_features, self.in_features = weight.shape
        bias = None if bias is None else bias.detach().to("cpu", torch.float32)
        self._packed = torch.ops.quantized.linear_prepack(weight, bias)
        self._reduce_range = _reduce_range()

    @staticmethod
    def rounded(weight: torch.Tensor) -> torch.Tensor:
        """A float weight rounded to ``qint8``, one scale per output channel (symmetric)."""
        weight = weight.detach().to("cpu", torch.float32)
        scales = (weight.abs().amax(dim=1) / 127.0).clamp(min=1e-12).double()
        zero_points = torch.zeros(weight.shape[0], dtype=torch.long)
        return torch.quantize_per_channel(weight, scales, zero_points, 0, torch.qint8)

    @staticmethod
    def from_int8(values: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
        """The ``qint8`` weight of int8 ``values`` and their per-channel ``scales``."""
        zero_points = torch.zeros(values.shape[0], dtype=torch.long)
        return torch._make_per_channel_quantized_tensor(
            values.to(torch.int8), scales.to(torch.float64), zero_points, 0
        )

    @classmethod
    def quantize(cls, weight: torch.Tensor, bias: torch.Tensor | None) -> Int8Linear:
        return cls(cls.rounded(weight), bias)

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> Int8Linear:
        return cls.quantize(linear.weight, linear.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.quantized.linear_dynamic(x, self._packed, self._reduce_range)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8"


def _trunk_linears(model: nn.Module) -> list[tuple[str, nn.Module, str]]:
    """(qualified name, parent, attribute) of each float Linear the trunks hold, in model order.

    Attention's packed input projection is one of them: ``<attention>.in_proj``.
    """
    found = []
    for trunk_name, trunk in model.named_modules():
        if not isinstance(trunk, Trunk):
            continue
        for parent_name, parent in trunk.named_modules(prefix=trunk_name):
            if isinstance(parent, MultiheadSelfAttention) and parent.in_proj is None:
                found.append((f"{parent_name}.in_proj", parent, "in_proj"))
            for name, child in parent.named_children():
                if type(child) is nn.Linear:
                    found.append((f"{parent_name}.{name}", parent, name))
    return found


def _float_weights(parent: nn.Module, attribute: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    if attribute == "in_proj" and isinstance(parent, MultiheadSelfAttention):
        return parent.in_proj_weight, parent.in_proj_bias
    linear = getattr(parent, attribute)
    return linear.weight, linear.bias


def _put(parent: nn.Module, attribute: str, layer: Int8Linear) -> None:
    """Replace the float layer with ``layer`` (for attention, its packed projection parameters)."""
    if attribute == "in_proj" and isinstance(parent, MultiheadSelfAttention):
        del parent.in_proj_weight, parent.in_proj_bias
    setattr(parent, attribute, layer)


_Int8Weights = tuple[torch.Tensor, torch.Tensor | None]  # a qint8 weight and its float bias


def _replace_all(
    layers: list[tuple[str, nn.Module, str]],
    weights: Callable[[str, nn.Module, str], _Int8Weights],
) -> None:
    """Put an :class:`Int8Linear` made of ``weights(name, parent, attribute)`` in each place.

    Packing a weight for the engine is single-threaded and releases the GIL, so
    layers are packed as many at once as there are cores to run on (at load
    nothing else runs: the server's own limit on PyTorch's threads, which
    leaves cores to decoding, need not apply); ``weights`` runs in this thread
    (rounding is multi-threaded already), a group at a time.
    """
    workers = _usable_cores()
    with ThreadPoolExecutor(workers, thread_name_prefix="int8-pack") as pool:
        for start in range(0, len(layers), workers):
            group = layers[start : start + workers]
            made = [weights(*place) for place in group]
            packed = pool.map(lambda args: Int8Linear(*args), made)
            for (_, parent, attribute), layer in zip(group, packed, strict=True):
                _put(parent, attribute, layer)


def _usable_cores() -> int:
    """Cores this process may run on (its CPU affinity where the platform has one)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def check_int8_target(device: torch.device | str, dtype: torch.dtype) -> None:
    """ValueError unless the model is to run on the CPU in float32 (the engine's only inputs)."""
    if torch.device(device).type != "cpu" or dtype != torch.float32:
        raise ValueError(
            f"int8 runs on the CPU in float32; this model is {dtype} on {device}"
            " (use --device cpu, or float16 on a GPU instead of int8)"
        )


def quantize_int8(model: nn.Module, keep: dict[str, torch.Tensor] | None = None) -> nn.Module:
    """Every trunk's Linear layers → :class:`Int8Linear`, in place; returns ``model``.

    The model must be on the CPU in float32 (the quantized engine's only
    inputs). Attention's packed ``in_proj_weight`` becomes an ``Int8Linear``
    too, so all four projections of each block run in int8. ``keep``, if
    given, receives each layer's int8 weight, scales and bias under the names
    :func:`load_int8_state_dict` reads (taken here: unpacking them later costs
    as much as rounding).
    """
    first = next(model.parameters())
    check_int8_target(first.device, first.dtype)
    layers = _trunk_linears(model)

    def rounded(name: str, parent: nn.Module, attribute: str) -> _Int8Weights:
        weight, bias = _float_weights(parent, attribute)
        quantized = Int8Linear.rounded(weight)
        if keep is not None:
            keep[f"{name}.weight_int8"] = quantized.int_repr()
            keep[f"{name}.weight_scales"] = quantized.q_per_channel_scales()
            if bias is not None:
                keep[f"{name}.bias"] = bias.detach()
        return quantized, bias

    _replace_all(layers, rounded)
    engine = torch.backends.quantized.engine
    log.info("int8: %d Linear layers quantized (%s engine)", len(layers), engine)
    return model


def load_int8_state_dict(model: nn.Module, state: dict[str, torch.Tensor]) -> nn.Module:
    """Turn a float model (on ``meta`` is best: nothing is allocated) into the int8 model
    ``state`` describes, strictly (a KeyError or RuntimeError if it does not fit).

    ``state``: the float parameters under their usual names, and for each
    trunk Linear ``<name>.weight_int8``, ``<name>.weight_scales`` and ``<name>.bias``
    (what :func:`quantize_int8` keeps, added to the quantized model's state_dict).
    """
    state = dict(state)

    def kept(name: str, parent: nn.Module, attribute: str) -> _Int8Weights:
        weight = Int8Linear.from_int8(
            state.pop(f"{name}.weight_int8"), state.pop(f"{name}.weight_scales")
        )
        return weight, state.pop(f"{name}.bias", None)

    _replace_all(_trunk_linears(model), kept)
    model.load_state_dict(state, strict=True, assign=True)
    return model


class Int8Cache:
    """A checkpoint's int8 weights, kept beside it as ``<checkpoint>.int8`` for the next load.

    Quantizing imagebind_huge takes seconds of CPU on every load; the file
    keeps its result (int8 weights and scales, the float rest), so a later load
    only packs the weights for the engine. It is keyed by the checkpoint's
    identity (:func:`checkpoint_identity`) and :data:`INT8_FORMAT`: another
    checkpoint, or another rounding, quantizes afresh and replaces it. Written
    atomically (a whole file or none), so two processes may race to write it.
    """

    def __init__(self, checkpoint: str | Path) -> None:
        self.checkpoint = Path(checkpoint)
        self.path = self.checkpoint.with_name(self.checkpoint.name + ".int8")
        self.identity = checkpoint_identity(self.checkpoint)

    def read(self) -> dict[str, torch.Tensor] | None:
        """The kept weights (memory-mapped), or None when absent, stale or unreadable."""
        if not self.path.is_file():
            return None
        try:
            saved = torch.load(self.path, map_location="cpu", weights_only=True, mmap=True)
        except Exception as err:  # a truncated or foreign file: quantize again
            log.warning("int8: ignoring %s, which cannot be read (%s)", self.path, err)
            return None
        if not isinstance(saved, dict) or saved.get("checkpoint") != self.identity:
            log.info("int8: %s was made from another checkpoint; quantizing again", self.path)
            return None
        return saved["state"]

    def write(self, model: nn.Module, int8_weights: dict[str, torch.Tensor]) -> bool:
        """Keep the quantized ``model`` with the ``int8_weights`` :func:`quantize_int8` kept;
        False (logged) where the directory is not writable."""
        started = time.perf_counter()
        try:
            handle, name = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.")
        except OSError as err:
            log.warning("int8: cannot keep the weights beside the checkpoint (%s)", err)
            return False
        partial = Path(name)
        try:
            with os.fdopen(handle, "wb") as file:
                state = {**model.state_dict(), **int8_weights}
                torch.save({"checkpoint": self.identity, "state": state}, file)
                file.flush()
                os.fsync(file.fileno())
            partial.chmod(0o644)
            os.replace(partial, self.path)
        except (OSError, RuntimeError) as err:  # torch.save reports a full disk as RuntimeError
            partial.unlink(missing_ok=True)
            log.warning("int8: cannot keep the weights in %s (%s)", self.path, err)
            return False
        log.info(
            "int8: kept the weights in %s (%.2f GB, %.1f s) for the next load",
            self.path,
            self.path.stat().st_size / 1e9,
            time.perf_counter() - started,
        )
        return True


def worth_keeping(checkpoint: Path) -> bool:
    """Whether quantizing ``checkpoint`` takes long enough to keep its int8 weights."""
    return checkpoint.stat().st_size >= KEEP_FROM_BYTES


def checkpoint_identity(path: Path) -> dict[str, int | str]:
    """What tells a checkpoint file from another without reading all of it.

    Size and modification time, and a hash of blocks spread over the file: a
    fine-tuned copy with the same size and a preserved mtime differs there.
    """
    stat = path.stat()
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for block in range(_SAMPLED_BLOCKS):
            file.seek(stat.st_size * block // _SAMPLED_BLOCKS)
            digest.update(file.read(_SAMPLED_BLOCK_BYTES))
    return {
        "format": INT8_FORMAT,
        "size": stat.st_size,
        "mtime_ns": stat.st_mtime_ns,
        "sampled_sha256": digest.hexdigest(),
    }
