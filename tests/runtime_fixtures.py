"""Test fixtures of the runtime: small torch modules that follow the export-graph contract with
state (a GRU hidden state, a history buffer), noise and chunk outputs, and a denoiser with its
sampler. They exercise the runtime's paths for those kinds of graph; they are not the project's
students (untrained, random weights), which implement the same contract in policydistill.models.
"""

from __future__ import annotations

import numpy as np
import torch
from gymnasium import spaces
from torch import nn

from policydistill.graph import OBS, ExportGraph, TensorSpec
from policydistill.models.normalizer import ObsNormalizer
from policydistill.runtime.sampler import SamplerSpec, alphas_cumprod
from policydistill.suites import load_suite
from policydistill.types import concat_groups, stack_obs

GROUPS = ("policy", "privileged")


def default_spaces() -> tuple[spaces.Dict, spaces.Box]:
    env = load_suite("default").make_env(0)
    obs_space = spaces.Dict({g: env.observation_space[g] for g in GROUPS})
    action_space = env.action_space
    env.close()
    return obs_space, action_space


def record_default(policy, episodes: int = 2, seed: int = 300) -> list[list[dict[str, np.ndarray]]]:
    """Observations of ``episodes`` episodes of the default suite's first task acted by ``policy``:
    one list of single-env observation groups {group: (1, dim)} per episode."""
    env = load_suite("default").make_env(0)
    out = []
    for k in range(episodes):
        obs, _ = env.reset(seed=seed + k)
        policy.reset()
        seen, done = [], False
        while not done:
            batch = stack_obs([obs])
            seen.append({g: batch[g] for g in GROUPS})
            obs, _, terminated, truncated, _ = env.step(policy.act(batch)[0])
            done = terminated or truncated
        out.append(seen)
    env.close()
    return out


def _mlp(width: int, hidden: int, layers: int, out: int, activation: type[nn.Module]) -> nn.Sequential:
    parts: list[nn.Module] = []
    for _ in range(layers):
        parts += [nn.Linear(width, hidden), activation()]
        width = hidden
    return nn.Sequential(*parts, nn.Linear(width, out))


class FixturePolicy(nn.Module):
    """Shared parts: groups, spaces, a normaliser with non-trivial statistics, tanh-unscale to the bounds."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.groups = GROUPS
        self.observation_space, self.action_space = default_spaces()
        self.obs_dim = sum(self.observation_space[g].shape[0] for g in GROUPS)
        self.act_dim = self.action_space.shape[0]
        self.normalizer = ObsNormalizer(self.obs_dim, enabled=True, clip=5.0)
        self.normalizer.set_stats(torch.linspace(-0.3, 0.3, self.obs_dim), torch.linspace(0.2, 2.0, self.obs_dim))
        self.register_buffer("low", torch.as_tensor(self.action_space.low))
        self.register_buffer("high", torch.as_tensor(self.action_space.high))

    def post(self, y: torch.Tensor) -> torch.Tensor:
        return self.low + 0.5 * (torch.tanh(y) + 1.0) * (self.high - self.low)

    def x(self, obs) -> torch.Tensor:
        return torch.as_tensor(concat_groups(obs, self.groups))

    def config(self) -> dict:
        return {"fixture": type(self).__name__}


class GRUFixture(FixturePolicy):
    """Recurrent: ``obs``, ``h`` (n, hidden) -> ``action``, ``h_next``; ``act`` carries h itself."""

    def __init__(self, hidden: int = 16, seed: int = 0) -> None:
        super().__init__(seed)
        self.cell = nn.GRUCell(self.obs_dim, hidden)
        self.head = nn.Linear(hidden, self.act_dim)
        self.hidden = hidden
        self._h: torch.Tensor | None = None

    def forward(self, x: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.cell(self.normalizer(x), h)
        return self.post(3.0 * self.head(h)), h

    def act(self, obs, deterministic: bool = True) -> np.ndarray:
        x = self.x(obs)
        if self._h is None:
            self._h = torch.zeros(len(x), self.hidden)
        with torch.inference_mode():
            a, self._h = self(x, self._h)
        return a.numpy()

    def reset(self, env_mask=None) -> None:
        if env_mask is None or self._h is None:
            self._h = None
        else:
            self._h = torch.where(torch.as_tensor(env_mask)[:, None], 0.0, self._h)

    def export_graph(self) -> ExportGraph:
        return ExportGraph(self, (TensorSpec(OBS, (self.obs_dim,), "observation"),
                                  TensorSpec("h", (self.hidden,), "state")),
                           (TensorSpec("action", (self.act_dim,), "action"), TensorSpec("h_next", (self.hidden,),
                                                                                         "state")),
                           state=(("h", "h_next"),))


class HistoryFixture(FixturePolicy):
    """History buffer: ``obs``, ``hist`` (n, k * obs_dim) -> ``action``, ``hist_next`` (shifted, newest last)."""

    def __init__(self, k: int = 3, seed: int = 1) -> None:
        super().__init__(seed)
        self.k = k
        self.net = nn.Sequential(nn.Linear(k * self.obs_dim, 32), nn.Tanh(), nn.Linear(32, self.act_dim))
        self._hist: torch.Tensor | None = None

    def forward(self, x: torch.Tensor, hist: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hist = torch.cat([hist[:, self.obs_dim:], self.normalizer(x)], dim=1)
        return self.post(3.0 * self.net(hist)), hist

    def act(self, obs, deterministic: bool = True) -> np.ndarray:
        x = self.x(obs)
        if self._hist is None:
            self._hist = torch.zeros(len(x), self.k * self.obs_dim)
        with torch.inference_mode():
            a, self._hist = self(x, self._hist)
        return a.numpy()

    def reset(self, env_mask=None) -> None:
        if env_mask is None or self._hist is None:
            self._hist = None
        else:
            self._hist = torch.where(torch.as_tensor(env_mask)[:, None], 0.0, self._hist)

    def export_graph(self) -> ExportGraph:
        size = (self.k * self.obs_dim,)
        return ExportGraph(self, (TensorSpec(OBS, (self.obs_dim,), "observation"), TensorSpec("hist", size, "state")),
                           (TensorSpec("action", (self.act_dim,), "action"), TensorSpec("hist_next", size, "state")),
                           state=(("hist", "hist_next"),))


class NoiseChunkFixture(FixturePolicy):
    """A generator of chunks: ``obs`` (n, n_obs_steps * obs_dim), ``noise`` (n, horizon, act_dim) -> ``chunk``."""

    def __init__(self, horizon: int = 8, n_action_steps: int = 4, n_obs_steps: int = 1, seed: int = 2,
                 hidden: int = 64, layers: int = 1) -> None:
        super().__init__(seed)
        self.horizon, self.n_action_steps, self.n_obs_steps = horizon, n_action_steps, n_obs_steps
        self.net = _mlp(n_obs_steps * self.obs_dim + horizon * self.act_dim, hidden, layers, horizon * self.act_dim,
                        nn.Tanh)

    def forward(self, x: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        obs = self.normalizer(x.reshape(-1, self.obs_dim)).reshape(-1, self.n_obs_steps * self.obs_dim)
        y = self.net(torch.cat([obs, noise.flatten(1)], dim=1))
        return self.post(2.0 * y.reshape(-1, self.horizon, self.act_dim))

    def export_graph(self) -> ExportGraph:
        return ExportGraph(self, (TensorSpec(OBS, (self.n_obs_steps * self.obs_dim,), "observation"),
                                  TensorSpec("noise", (self.horizon, self.act_dim), "noise")),
                           (TensorSpec("chunk", (self.horizon, self.act_dim), "chunk"),))


class DenoiserFixture(FixturePolicy):
    """A denoiser ``obs``, ``sample``, ``timestep`` -> ``prediction`` (epsilon) with a DDIM sampler;
    :meth:`sample` is the same loop in torch."""

    def __init__(self, horizon: int = 8, n_action_steps: int = 4, steps: int = 10, eta: float = 0.0,
                 seed: int = 3, hidden: int = 64, layers: int = 1) -> None:
        super().__init__(seed)
        self.horizon, self.n_action_steps, self.n_obs_steps = horizon, n_action_steps, 1
        self.spec = SamplerSpec.ddim(alphas_cumprod("squaredcos_cap_v2", 100), steps, action_scale=[0.8, 0.9],
                                     action_offset=[0.1, -0.1], eta=eta, action_low=self.action_space.low.tolist(),
                                     action_high=self.action_space.high.tolist())
        self.net = _mlp(self.obs_dim + horizon * self.act_dim + 1, hidden, layers, horizon * self.act_dim, nn.Mish)

    def forward(self, x: torch.Tensor, sample: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        h = torch.cat([self.normalizer(x), sample.flatten(1), timestep / 100.0], dim=1)
        return self.net(h).reshape(-1, self.horizon, self.act_dim)

    def sample(self, x: torch.Tensor, x_t: torch.Tensor) -> torch.Tensor:
        """The K-step loop in torch from the initial noise ``x_t`` (n, horizon, act_dim)."""
        with torch.inference_mode():
            for i, t in enumerate(self.spec.timesteps):
                eps = self(x, x_t, torch.full((len(x), 1), float(t)))
                x_t = self.spec.step(i, x_t, eps)
            return self.spec.postprocess(x_t)

    def export_graph(self) -> ExportGraph:
        shape = (self.horizon, self.act_dim)
        return ExportGraph(self, (TensorSpec(OBS, (self.obs_dim,), "observation"),
                                  TensorSpec("sample", shape, "sample"), TensorSpec("timestep", (1,), "timestep")),
                           (TensorSpec("prediction", shape, "prediction"),), sampler=self.spec.to_json())
