"""Diffusion policy: a denoiser of normalised action chunks conditioned on the observation window.

Training (:mod:`policydistill.distill.diffusion`) noises expert chunks with the
:class:`~policydistill.models.noise.NoiseSchedule` (``noise``: 100 cosine levels by default) and fits
the denoiser to the clean chunk (``prediction="sample"``) or to the noise (``"epsilon"``). Acting
draws a chunk with the configured ``sampler``: ``{"kind": "ddim" | "ddpm", "steps": K}``, a runtime
setting (:meth:`set_sampler`) that evaluation and benchmarks override.

Export: :meth:`export_graph` is the denoiser as a graph that a runtime runs as the K-step loop::

    inputs   obs       (n, n_obs_steps * obs_dim)  raw observation window, oldest first
             sample    (n, horizon, act_dim)       x_t in normalised action space (role "sample")
             timestep  (n,)                        noise level t as float32 (role "timestep")
    outputs  chunk     (n, horizon, act_dim)       the clean-chunk estimate in the action space
             x0        (n, horizon, act_dim)       the clean-chunk estimate, normalised and clipped

    x = noise;  for each step (t, abar, abar_prev, sigma) of the plan:
        x0 = graph(obs, x, t).x0;  eps = (x - sqrt(abar) x0) / sqrt(1 - abar)
        x  = sqrt(abar_prev) x0 + sqrt(1 - abar_prev - sigma^2) eps + sigma z      (last step: x0)
    action chunk = graph output "chunk" of the last step

The plan follows from the bundle config's ``noise`` (steps, schedule) and ``sampler`` (kind, steps)
as :meth:`NoiseSchedule.plan` computes it; :meth:`sampler_table` lists it explicitly.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
from gymnasium import spaces
from torch import nn

from policydistill.models import resolve_device
from policydistill.models.chunk_policy import BASE_KEYS, ChunkPolicy
from policydistill.models.denoisers import make_denoiser
from policydistill.models.noise import SAMPLERS, NoiseSchedule
from policydistill.runtime.graph import OBS, ExportGraph, TensorSpec

CONFIG_KEYS = BASE_KEYS | {"denoiser", "denoiser_params", "noise", "sampler"}


class DiffusionPolicy(ChunkPolicy):
    """A DDPM chunk policy reading ``groups`` (``task`` among them for a multi-task generalist)."""

    def __init__(self, groups: Sequence[str], observation_space: spaces.Dict, action_space: spaces.Box,
                 n_obs_steps: int = 2, horizon: int = 16, n_action_steps: int = 4, seed: int = 0,
                 denoiser: str = "mlp", denoiser_params: dict[str, Any] | None = None,
                 noise: dict[str, Any] | None = None, sampler: dict[str, Any] | None = None) -> None:
        super().__init__(groups, observation_space, action_space, n_obs_steps, horizon, n_action_steps, seed)
        self.denoiser_kind, self.denoiser_params = denoiser, dict(denoiser_params or {})
        self.denoiser = make_denoiser(denoiser, self.act_dim, self.horizon, self.cond_dim, self.denoiser_params)
        self.schedule = NoiseSchedule(**dict(noise or {}))
        sampler = {"kind": "ddim", "steps": self.schedule.steps, **dict(sampler or {})}
        unknown = set(sampler) - {"kind", "steps"}
        if unknown:
            raise ValueError(f"unknown sampler keys {sorted(unknown)}; valid keys are ['kind', 'steps']")
        self.set_sampler(sampler["kind"], sampler["steps"])

    def set_sampler(self, kind: str, steps: int) -> DiffusionPolicy:
        """Sample with ``kind`` (``ddim`` | ``ddpm``) in ``steps`` denoiser calls; returns self."""
        self._plan = self.schedule.plan(kind, steps)
        self.sampler = {"kind": kind, "steps": int(steps)}
        return self

    def sampler_table(self) -> list[dict[str, float | None]]:
        """The sampler's steps: noise level ``t``, ``abar``, ``abar_prev`` (None at the last) and ``sigma``."""
        return [{"t": s.t, "abar": s.abar, "abar_prev": s.abar_prev, "sigma": s.sigma} for s in self._plan]

    # ---- torch path --------------------------------------------------------------------------

    def denoise(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """Raw denoiser output (x0 or eps) for x_t (n, H, A) at integer levels t (n,)."""
        return self.denoiser(x_t, t.float(), cond)

    def x0(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """The clean-chunk estimate (normalised, clipped) (n, H, A) at integer levels t (n,)."""
        return self.schedule.split(self.denoise(x_t, t, cond), x_t, self.schedule.abar_at(t))[0]

    def sample_from(self, cond: torch.Tensor, x: torch.Tensor, generator: torch.Generator | None,
                    plan: Sequence[Any] | None = None) -> torch.Tensor:
        """Run the sampler (``plan``, default the configured one) from the noise ``x`` (n, H, A)."""
        n = len(cond)
        for step in plan or self._plan:
            pred = self.denoiser(x, torch.full((n,), float(step.t), device=x.device), cond)
            x0, eps = self.schedule.split(pred, x, step.abar)
            z = self.noise(n, generator) if step.sigma > 0 else None
            x = self.schedule.update(step, x0, eps, z)
        return x

    def sample_norm(self, cond: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        return self.sample_from(cond, self.noise(len(cond), generator), generator)

    def export_graph(self) -> ExportGraph:
        """The denoiser as a graph (see the module docstring): obs window, sample, timestep -> chunk, x0."""

        def example(graph: ExportGraph, n: int, generator: torch.Generator) -> tuple[torch.Tensor, ...]:
            obs = self.example_obs(n, generator, self.n_obs_steps).flatten(1)
            t = torch.randint(0, self.schedule.steps, (n,), generator=generator).float()
            return obs, torch.randn(n, self.horizon, self.act_dim, generator=generator), t

        shape = (self.horizon, self.act_dim)
        return ExportGraph(_DenoiserGraph(self),
                           (TensorSpec(OBS, (self.cond_dim,), "observation"), TensorSpec("sample", shape, "sample"),
                            TensorSpec("timestep", (), "timestep")),
                           (TensorSpec("chunk", shape, "chunk"), TensorSpec("x0", shape, "prediction")),
                           example=example)

    # ---- config ------------------------------------------------------------------------------

    def config(self) -> dict[str, Any]:
        return {**self.base_config(), "denoiser": self.denoiser_kind, "denoiser_params": dict(self.denoiser_params),
                "noise": self.schedule.config(), "sampler": dict(self.sampler)}

    @classmethod
    def from_config(cls, cfg: dict[str, Any], device: str | torch.device = "cpu") -> DiffusionPolicy:
        return cls(**cls.check_config(cfg, CONFIG_KEYS)).to(resolve_device(device))


class _DenoiserGraph(nn.Module):
    """obs window (n, n_obs*obs_dim), x_t (n, H, A), t (n,) -> (chunk in the action space, normalised x0)."""

    def __init__(self, policy: DiffusionPolicy) -> None:
        super().__init__()
        self.policy = policy
        self.register_buffer("abar", policy.schedule.abar.clone())

    def forward(self, obs: torch.Tensor, sample: torch.Tensor, timestep: torch.Tensor) -> tuple[torch.Tensor, ...]:
        p = self.policy
        cond = p.obs_normalizer(obs.reshape(-1, p.n_obs_steps, p.obs_dim)).flatten(1)
        pred = p.denoiser(sample, timestep, cond)
        abar = self.abar[timestep.long()].view(-1, 1, 1)
        x0 = p.schedule.split(pred, sample, abar)[0]
        return p.to_actions(x0), x0


def parse_sampler(spec: str) -> tuple[str, int]:
    """``"ddim:10"`` -> ("ddim", 10)."""
    kind, sep, steps = str(spec).partition(":")
    if not sep or not steps.isdigit() or kind not in SAMPLERS:
        raise ValueError(f"invalid sampler '{spec}': expected '<kind>:<steps>' with kind one of {sorted(SAMPLERS)}, "
                         "e.g. 'ddim:10'")
    return kind, int(steps)


def apply_sampler(policies: Iterable[Any], spec: str) -> None:
    """Set the sampler ``spec`` (``"ddim:10"``) on every policy; each must be a :class:`DiffusionPolicy`."""
    kind, steps = parse_sampler(spec)
    for policy in policies:
        if not isinstance(policy, DiffusionPolicy):
            raise ValueError(f"sampler={spec} applies to diffusion policies only, got a {type(policy).__name__}")
        policy.set_sampler(kind, steps)

