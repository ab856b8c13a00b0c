"""Sinusoidal embedding of a diffusion noise level, shared by the denoisers."""

from __future__ import annotations

import math

import torch
from torch import nn


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

    def weights(self) -> list[torch.Tensor]:
        """Its parameters, listed without walking the module tree (read on every inference call)."""
        first, last = self.mlp[0], self.mlp[2]
        return [first.weight, first.bias, last.weight, last.bias]

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        x = t.float().reshape(-1, 1) * self.freqs
        return self.mlp(torch.cat([x.sin(), x.cos()], dim=-1))
