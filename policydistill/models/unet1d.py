"""A small 1-D temporal U-Net denoiser over action chunks, conditioned by FiLM.

The chunk (n, H, A) is a sequence of H steps with A channels. Each level holds two residual conv
blocks whose features are scaled and shifted by a linear map of ``[time embedding, cond]`` (FiLM),
then halves the sequence; the way up concatenates the skip features of the same resolution.
``H`` must be divisible by ``2 ** (len(channels) - 1)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from policydistill.models.time_embedding import TimeEmbedding


def _conv_block(c_in: int, c_out: int, kernel_size: int, groups: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv1d(c_in, c_out, kernel_size, padding=kernel_size // 2), nn.GroupNorm(groups, c_out),
                         nn.SiLU())


class FiLMResBlock(nn.Module):
    """conv -> FiLM(cond) -> conv, plus a (1x1 conv) skip: (n, c_in, L), (n, cond_dim) -> (n, c_out, L)."""

    def __init__(self, c_in: int, c_out: int, cond_dim: int, kernel_size: int, groups: int) -> None:
        super().__init__()
        self.c_out = c_out
        self.block1 = _conv_block(c_in, c_out, kernel_size, groups)
        self.block2 = _conv_block(c_out, c_out, kernel_size, groups)
        self.film = nn.Sequential(nn.SiLU(), nn.Linear(cond_dim, 2 * c_out))
        self.skip = nn.Conv1d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        film, c = self.film(cond).unsqueeze(-1), self.c_out  # constant slices keep exported shapes static
        return self.block2(film[:, :c] * self.block1(x) + film[:, c:]) + self.skip(x)


class TemporalUnet1D(nn.Module):
    """x_t (n, H, A), t (n,), cond (n, cond_dim) -> prediction (n, H, A)."""

    def __init__(self, act_dim: int, horizon: int, cond_dim: int, channels: Sequence[int] = (32, 64),
                 kernel_size: int = 5, time_dim: int = 32, groups: int = 8) -> None:
        super().__init__()
        channels = [int(c) for c in channels]
        if not channels or any(c % groups for c in channels):
            raise ValueError(f"U-Net channels {channels} must be non-empty multiples of groups={groups}")
        if horizon % 2 ** (len(channels) - 1):
            raise ValueError(f"U-Net with {len(channels)} levels needs a horizon divisible by "
                             f"{2 ** (len(channels) - 1)}, got {horizon}")
        self.time = TimeEmbedding(time_dim)
        c_dim = time_dim + cond_dim

        def block(c_in: int, c_out: int) -> FiLMResBlock:
            return FiLMResBlock(c_in, c_out, c_dim, kernel_size, groups)

        ins = [act_dim, *channels[:-1]]
        self.down = nn.ModuleList()
        for i, (c_in, c_out) in enumerate(zip(ins, channels, strict=True)):
            last = i == len(channels) - 1
            down = nn.Identity() if last else nn.Conv1d(c_out, c_out, 3, stride=2, padding=1)
            self.down.append(nn.ModuleList([block(c_in, c_out), block(c_out, c_out), down]))
        self.mid = nn.ModuleList([block(channels[-1], channels[-1]), block(channels[-1], channels[-1])])
        self.up = nn.ModuleList()
        for c_low, c_high in reversed(list(zip(channels[:-1], channels[1:], strict=True))):
            self.up.append(nn.ModuleList([block(2 * c_high, c_low), block(c_low, c_low),
                                          nn.ConvTranspose1d(c_low, c_low, 4, stride=2, padding=1)]))
        self.final = nn.Sequential(_conv_block(channels[0], channels[0], kernel_size, groups),
                                   nn.Conv1d(channels[0], act_dim, 1))

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        c = torch.cat([(t if t.dim() == 2 else self.time(t)), cond], dim=-1)
        h = x.transpose(1, 2)
        skips = []
        for res1, res2, down in self.down:
            h = res2(res1(h, c), c)
            skips.append(h)
            h = down(h)
        for res in self.mid:
            h = res(h, c)
        for res1, res2, up in self.up:
            h = up(res2(res1(torch.cat([h, skips.pop()], dim=1), c), c))
        return self.final(h).transpose(1, 2)
