"""Denoisers of action chunks: ``(x_t (n, H, A), t (n,), cond (n, cond_dim)) -> (n, H, A)``.

``cond`` is the normalised observation window (which holds the ``task`` group, so one denoiser
serves every task of a suite). ``t`` is the noise level as a float (the exported graph takes it as
float32), embedded sinusoidally. Two kinds: :class:`MLPDenoiser` (the chunk flattened) and the
small temporal U-Net of :mod:`policydistill.models.unet1d`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

DENOISERS = ("mlp", "unet")


class TimeEmbedding(nn.Module):
    """Sinusoidal features of the noise level followed by a small MLP: t (n,) -> (n, dim)."""

    def __init__(self, dim: int = 32) -> None:
        super().__init__()
        if dim < 4 or dim % 2:
            raise ValueError(f"time embedding dim must be an even int >= 4, got {dim}")
        self.dim = dim
        freqs = torch.exp(-math.log(10_000.0) * torch.arange(dim // 2, dtype=torch.float32) / (dim // 2 - 1))
        self.register_buffer("freqs", freqs, persistent=False)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.SiLU(), nn.Linear(2 * dim, dim))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        x = t.float().reshape(-1, 1) * self.freqs
        return self.mlp(torch.cat([x.sin(), x.cos()], dim=-1))


class MLPDenoiser(nn.Module):
    """``[x_t flattened, cond, time embedding]`` -> SiLU MLP -> the prediction, flattened back to (H, A)."""

    def __init__(self, act_dim: int, horizon: int, cond_dim: int, hidden: Sequence[int] = (256, 256, 256),
                 time_dim: int = 32) -> None:
        super().__init__()
        self.act_dim, self.horizon = act_dim, horizon
        self.time = TimeEmbedding(time_dim)
        layers: list[nn.Module] = []
        last = act_dim * horizon + cond_dim + time_dim
        for h in hidden:
            layers += [nn.Linear(last, int(h)), nn.SiLU()]
            last = int(h)
        layers.append(nn.Linear(last, act_dim * horizon))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        h = torch.cat([x.flatten(1), cond, self.time(t)], dim=-1)
        return self.net(h).view(-1, self.horizon, self.act_dim)


def make_denoiser(kind: str, act_dim: int, horizon: int, cond_dim: int, params: dict[str, Any]) -> nn.Module:
    """A denoiser of ``kind`` (``mlp`` | ``unet``); ``params`` are its constructor's keyword arguments."""
    from policydistill.models.unet1d import TemporalUnet1D

    classes = {"mlp": MLPDenoiser, "unet": TemporalUnet1D}
    if kind not in classes:
        raise ValueError(f"unknown denoiser '{kind}'; expected one of {list(DENOISERS)}")
    try:
        return classes[kind](act_dim, horizon, cond_dim, **params)
    except TypeError as e:
        raise ValueError(f"invalid parameters {sorted(params)} for the '{kind}' denoiser: {e}") from e
