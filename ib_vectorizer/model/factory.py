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
from .quantize import quantize_int8

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
    ``quantize="int8"`` then turns its trunks to dynamic int8 (CPU, float32).
    """
    config = model if isinstance(model, ImageBindConfig) else get_config(model)
    if (checkpoint is None) == (random_seed is None):
        raise ValueError("pass exactly one of checkpoint= or random_seed=")
    if quantize not in QUANTIZE_MODES:
        raise ValueError(f"quantize must be one of {', '.join(QUANTIZE_MODES)}, not {quantize!r}")
    started = time.perf_counter()
    if checkpoint is not None:
        net = build_model(config, device="meta")
        state = load_state_dict_file(checkpoint)
        try:
            net.load_state_dict(state, strict=True, assign=True)
        except RuntimeError as err:
            raise ValueError(f"checkpoint {checkpoint} does not fit model config: {err}") from err
    else:
        net = build_model(config, device="cpu")
        init_random_weights(net, seed=random_seed)
    net = net.to(device=device, dtype=dtype).eval()
    net.requires_grad_(False)
    if quantize == "int8":
        quantize_int8(net)
    log.info(
        "model ready: %s weights on %s as %s%s in %.1f s",
        "checkpoint" if checkpoint is not None else "random",
        device,
        dtype,
        " with int8 trunks" if quantize == "int8" else "",
        time.perf_counter() - started,
    )
    return net
