"""Build an ImageBind from a preset or config file, with checkpoint or random weights."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch
from torch import nn

from ..choices import QUANTIZE_MODES
from .config import ImageBindConfig, get_config
from .imagebind import ImageBind
from .quantize import (
    Int8Cache,
    check_int8_target,
    load_int8_state_dict,
    quantize_int8,
    worth_keeping,
)

log = logging.getLogger(__name__)


def build_model(config: ImageBindConfig, device: str | torch.device = "cpu") -> ImageBind:
    """An ImageBind with uninitialised storage on ``device`` (use ``"meta"`` to allocate none)."""
    with torch.device(device):
        return ImageBind(config)


def init_random_weights(model: nn.Module, seed: int = 0) -> None:
    """Plausible random weights, for benchmarks and tests that need no checkpoint."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith(("norm_layer.weight", "norm_1.weight", "norm_2.weight")) or (
                param.ndim == 1 and name.endswith(".weight")
            ):
                param.fill_(1.0)
            elif name.endswith(".bias") and param.ndim == 1:
                param.zero_()
            else:
                values = torch.randn(param.shape, generator=generator) * 0.02
                param.copy_(values.to(param.dtype))


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a checkpoint without executing pickled code; memory-mapped where possible."""
    path = Path(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:
        # Files written with the legacy (non-zip) format cannot be memory-mapped.
        return torch.load(path, map_location="cpu", weights_only=True)


def create_model(
    model: str | Path | ImageBindConfig = "imagebind_huge",
    checkpoint: str | Path | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    random_seed: int | None = None,
    quantize: str = "none",
) -> ImageBind:
    """The one way to get a ready-to-run model.

    ``model`` is a preset name, a config JSON path or a config. With
    ``checkpoint`` the weights load with ``strict=True`` straight into place
    (no second copy in memory); with ``random_seed`` instead, random weights.
    The model is returned in eval mode on ``device`` with ``dtype`` weights;
    ``quantize="int8"`` then turns its trunks to dynamic int8 (CPU, float32); the
    int8 weights of a large checkpoint are kept beside it (``<checkpoint>.int8``)
    and reused while the checkpoint is unchanged (:class:`~.quantize.Int8Cache`).
    """
    config = model if isinstance(model, ImageBindConfig) else get_config(model)
    if (checkpoint is None) == (random_seed is None):
        raise ValueError("pass exactly one of checkpoint= or random_seed=")
    if quantize not in QUANTIZE_MODES:
        raise ValueError(f"quantize must be one of {', '.join(QUANTIZE_MODES)}, not {quantize!r}")
    if quantize == "int8":
        check_int8_target(device, dtype)
    started = time.perf_counter()
    if checkpoint is not None and quantize == "int8":
        net = _int8_from_checkpoint(config, Path(checkpoint))
    else:
        net = _float_model(config, checkpoint, random_seed).to(device=device, dtype=dtype)
        if quantize == "int8":
            quantize_int8(net)
    net.eval().requires_grad_(False)
    log.info(
        "model ready: %s weights on %s as %s%s in %.1f s",
        "checkpoint" if checkpoint is not None else "random",
        device,
        dtype,
        " with int8 trunks" if quantize == "int8" else "",
        time.perf_counter() - started,
    )
    return net


def _float_model(
    config: ImageBindConfig, checkpoint: str | Path | None, random_seed: int | None
) -> ImageBind:
    """The model on the CPU with the checkpoint's weights (memory-mapped), or random ones."""
    if checkpoint is None:
        net = build_model(config, device="cpu")
        init_random_weights(net, seed=random_seed)
        return net
    net = build_model(config, device="meta")
    state = load_state_dict_file(checkpoint)
    try:
        net.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as err:
        raise ValueError(f"checkpoint {checkpoint} does not fit model config: {err}") from err
    return net


def _int8_from_checkpoint(config: ImageBindConfig, checkpoint: Path) -> ImageBind:
    """The int8 model of ``checkpoint``: from the int8 file kept beside it when that is
    current, else quantized now and kept there for the next load (small checkpoints,
    quick to quantize, are not kept)."""
    if not worth_keeping(checkpoint):
        return quantize_int8(_float_model(config, checkpoint, None).to(dtype=torch.float32))
    cache = Int8Cache(checkpoint)
    state = cache.read()
    if state is not None:
        try:
            net = load_int8_state_dict(build_model(config, device="meta"), state)
        except (KeyError, RuntimeError) as err:
            log.warning("int8: %s does not fit this model (%s); quantizing again", cache.path, err)
        else:
            log.info("int8: weights from %s", cache.path)
            return net
    int8_weights: dict[str, torch.Tensor] = {}
    net = _float_model(config, checkpoint, None).to(dtype=torch.float32)
    quantize_int8(net, keep=int8_weights)
    cache.write(net, int8_weights)
    return net
