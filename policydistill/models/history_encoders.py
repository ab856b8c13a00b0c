"""Encoders of an observation history, each with an explicit per-env state that starts at zero.

Every encoder maps one normalised observation ``x (n, d)`` and its state ``s (n, *state_shape)`` to
features ``(n, feature_dim)`` and the next state, in :meth:`step`. A zero state is "no history":
the state right after an episode reset.

- :class:`WindowEncoder` (``stack``: the last ``history`` frames flattened into an MLP layer;
  ``tcn``: a 1-D temporal convolution over them). Its state holds the ``history - 1`` previous
  frames, each with a validity flag (last column: 1 for an observed frame, 0 for padding), so a
  fresh state is an all-padding history. Padded frames enter the network as zeros with flag 0.
- :class:`GRUEncoder`: a one-layer GRU whose state is its hidden vector ``(n, 1, hidden)``.
  :meth:`GRUEncoder.sequence` unrolls it over ``(B, T, d)`` for truncated backpropagation through time.
"""

from __future__ import annotations

import torch
from torch import nn

WINDOW_KINDS = ("stack", "tcn")


class WindowEncoder(nn.Module):
    """Features of the window of the last ``history`` frames (the current one last)."""

    recurrent = False

    def __init__(self, kind: str, obs_dim: int, history: int, feature_dim: int, channels: int = 64) -> None:
        super().__init__()
        if kind not in WINDOW_KINDS:
            raise ValueError(f"window encoder kind '{kind}' is not one of {list(WINDOW_KINDS)}")
        if history < 2:
            raise ValueError(f"a history encoder needs history >= 2 frames, got {history}")
        self.kind, self.obs_dim, self.history, self.feature_dim = kind, obs_dim, history, feature_dim
        self.state_shape = (history - 1, obs_dim + 1)
        width = obs_dim + 1
        if kind == "stack":
            self.net = nn.Sequential(nn.Flatten(), nn.Linear(history * width, feature_dim), nn.ReLU())
        else:
            # two causal-free 'valid' convolutions (dilation 1 then 2) then a linear map of the whole output
            t_out = history - 2 - 4
            if t_out < 1:
                raise ValueError(f"the tcn encoder needs history >= 7 frames, got {history}")
            self.net = nn.Sequential(nn.Conv1d(width, channels, 3), nn.ReLU(),
                                     nn.Conv1d(channels, channels, 3, dilation=2), nn.ReLU(),
                                     nn.Flatten(), nn.Linear(channels * t_out, feature_dim), nn.ReLU())

    def features(self, window: torch.Tensor) -> torch.Tensor:
        """window (n, history, d + 1), normalised frames zeroed where the flag is 0 -> (n, feature_dim)."""
        return self.net(window if self.kind == "stack" else window.transpose(1, 2))

    def step(self, x: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (n, d) normalised, state (n, history - 1, d + 1) -> features (n, f), next state."""
        frame = torch.cat([x, torch.ones_like(x[:, :1])], dim=1).unsqueeze(1)
        valid = state[:, :, -1:]
        window = torch.cat([torch.cat([state[:, :, :-1] * valid, valid], dim=2), frame], dim=1)
        return self.features(window), window[:, 1:]


class GRUEncoder(nn.Module):
    """A one-layer GRU; its hidden vector is the features. State: (n, 1, hidden), batch first."""

    recurrent = True

    def __init__(self, obs_dim: int, hidden: int) -> None:
        super().__init__()
        self.obs_dim, self.feature_dim = obs_dim, hidden
        self.state_shape = (1, hidden)
        self.gru = nn.GRU(obs_dim, hidden, batch_first=True)

    def sequence(self, x: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, T, d) normalised, state (B, 1, hidden) -> features (B, T, hidden), state after step T."""
        out, h = self.gru(x, state.transpose(0, 1).contiguous())
        return out, h.transpose(0, 1)

    def step(self, x: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (n, d) normalised, state (n, 1, hidden) -> features (n, hidden), next state."""
        out, h = self.sequence(x.unsqueeze(1), state)
        return out[:, 0], h
