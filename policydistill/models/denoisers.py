"""Denoisers of action chunks: ``(x_t (n, H, A), t (n,), cond (n, cond_dim)) -> (n, H, A)``.

``cond`` is the normalised observation window (which holds the ``task`` group, so one denoiser
serves every task of a suite). ``t`` is the noise level as a float (the exported graph takes it as
float32), embedded sinusoidally; a (n, time_dim) ``t`` is taken as that embedding, computed beforehand.
Two kinds: :class:`MLPDenoiser` (the chunk flattened) and the small temporal U-Net of
:mod:`policydistill.models.unet1d`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from policydistill.models.time_embedding import TimeEmbedding
from policydistill.models.unet1d import TemporalUnet1D

DENOISERS = ("mlp", "unet")


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
        h = torch.cat([x.flatten(1), cond, (t if t.dim() == 2 else self.time(t))], dim=-1)
        return self.net(h).view(-1, self.horizon, self.act_dim)


def make_denoiser(kind: str, act_dim: int, horizon: int, cond_dim: int, params: dict[str, Any]) -> nn.Module:
    """A denoiser of ``kind`` (``mlp`` | ``unet``); ``params`` are its constructor's keyword arguments."""
    classes = {"mlp": MLPDenoiser, "unet": TemporalUnet1D}
    if kind not in classes:
        raise ValueError(f"unknown denoiser '{kind}'; expected one of {list(DENOISERS)}")
    try:
        return classes[kind](act_dim, horizon, cond_dim, **params)
    except TypeError as e:
        raise ValueError(f"invalid parameters {sorted(params)} for the '{kind}' denoiser: {e}") from e
