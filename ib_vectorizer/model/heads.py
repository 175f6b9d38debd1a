"""Heads (pool one token, project to the shared space) and output scaling."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .transformer import TRUNK_LN_EPS


class SelectToken(nn.Module):
    def __init__(self, index: int = 0) -> None:
        super().__init__()
        self.index = index

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, self.index]


def cls_head(dim: int, out_dim: int, dropout: bool = False) -> nn.Sequential:
    """LayerNorm → CLS token → Linear. The IMU head has a dropout before its Linear."""
    layers: list[nn.Module] = [nn.LayerNorm(dim, eps=TRUNK_LN_EPS), SelectToken(0)]
    if dropout:
        layers.append(nn.Dropout(0.5))
    layers.append(nn.Linear(dim, out_dim, bias=False))
    return nn.Sequential(*layers)


class TextHead(nn.Module):
    """Pool the end-of-text token (the largest id in each row), then LayerNorm → Linear."""

    def __init__(self, dim: int, out_dim: int) -> None:
        super().__init__()
        self.proj = nn.Sequential(
            nn.LayerNorm(dim, eps=TRUNK_LN_EPS), nn.Linear(dim, out_dim, bias=False)
        )

    def forward(self, x: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        eot = ids.argmax(dim=-1)
        return self.proj(x[torch.arange(x.shape[0], device=x.device), eot])


class Normalize(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x, dim=-1)


class LogitScale(nn.Module):
    """Multiply by ``exp(log_logit_scale)``, clipped at ``max_scale``.

    Text's value is learned (read from the checkpoint); the others are fixed
    constants that the checkpoint stores too.
    """

    def __init__(self, scale: float, max_scale: float | None = None) -> None:
        super().__init__()
        self.max_scale = max_scale
        self.register_buffer("log_logit_scale", torch.tensor(math.log(scale)))

    @property
    def scale(self) -> torch.Tensor:
        value = self.log_logit_scale.float().exp()
        return value.clamp(max=self.max_scale) if self.max_scale is not None else value

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale


def postprocessor(scale: float | None = None, max_scale: float | None = None) -> nn.Sequential:
    """Unit-normalise, then (all but vision) scale: the reference's output convention."""
    if scale is None:
        return nn.Sequential(Normalize())
    return nn.Sequential(Normalize(), LogitScale(scale, max_scale))
