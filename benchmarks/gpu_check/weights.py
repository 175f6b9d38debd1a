"""The run's one set of weights: drawn on the device, copied per dtype, saved for the server.

``create_model(random_seed=...)`` draws 1.2 B values with a CPU generator
(about 21 s for imagebind_huge on a two-core machine: 7 s to build, 14 s to
draw), then copies them to the device. Here the model is built on the device
and drawn there with the same rule (norm weights 1, biases 0, the rest
N(0, 0.02)), which takes well under a second on a GPU. Parity compares dtypes
and devices on the same weights, so which random draw they are does not
matter; the server gets exactly these weights through a checkpoint file.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import torch

from ib_vectorizer.model import ImageBind, build_model, create_model, get_config

_ONES = ("norm_layer.weight", "norm_1.weight", "norm_2.weight")


@torch.no_grad()
def init_on_device(model: ImageBind, seed: int) -> None:
    """:func:`ib_vectorizer.model.factory.init_random_weights`'s rule, drawn where the
    parameters live, so no value crosses from the CPU."""
    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed)
    for name, param in model.named_parameters():
        if name.endswith(_ONES) or (param.ndim == 1 and name.endswith(".weight")):
            param.fill_(1.0)
        elif param.ndim == 1 and name.endswith(".bias"):
            param.zero_()
        else:
            param.normal_(0.0, 0.02, generator=generator)


def random_model(model: str, device: str, seed: int) -> ImageBind:
    """``model`` (preset or config path) in float32 on ``device`` with seeded random weights."""
    net = build_model(get_config(model), device=device)
    init_on_device(net, seed)
    return net.eval().requires_grad_(False)


def reference_model(model: str, checkpoint: Path | None, device: str, seed: int) -> ImageBind:
    """The float32 model every comparison starts from: ``checkpoint``'s weights, else random."""
    if checkpoint is not None:
        return create_model(model, checkpoint=checkpoint, device=device)
    return random_model(model, device, seed)


def clone(model: ImageBind, device: str | torch.device, dtype: torch.dtype) -> ImageBind:
    """A copy of ``model`` on ``device`` in ``dtype`` (float tensors), sharing no storage."""
    state = {
        name: tensor.to(
            device=device, dtype=dtype if tensor.is_floating_point() else tensor.dtype, copy=True
        )
        for name, tensor in model.state_dict().items()
    }
    copy = build_model(model.config, device="meta")
    copy.load_state_dict(state, strict=True, assign=True)
    return copy.eval().requires_grad_(False)


def save_checkpoint(model: ImageBind, path: Path, dtype: torch.dtype) -> dict[str, Any]:
    """``model``'s weights in ``dtype`` as a checkpoint the server loads (memory-mapped).

    float16 halves the file (about 2.4 GB instead of 4.8 GB for imagebind_huge;
    writing them took 6 s and 15 s on a two-core machine's disk), and the
    server converts to its dtype anyway. The host holds one copy, in ``dtype``.
    """
    started = time.perf_counter()
    state = {
        name: tensor.to(dtype=dtype if tensor.is_floating_point() else tensor.dtype).cpu()
        for name, tensor in model.state_dict().items()
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    del state
    return {
        "seconds": round(time.perf_counter() - started, 3),
        "bytes": os.path.getsize(path),
        "dtype": str(dtype).removeprefix("torch."),
    }
