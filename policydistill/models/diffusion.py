"""Diffusion policy: a denoiser of normalised action chunks conditioned on the observation window.

Training (:mod:`policydistill.distill.diffusion`) noises expert chunks with the
:class:`~policydistill.models.noise.NoiseSchedule` (``noise``: 100 cosine levels by default) and fits
the denoiser to the clean chunk (``prediction="sample"``) or to the noise (``"epsilon"``). Acting
draws a chunk with the configured ``sampler``: ``{"kind": "ddim" | "ddpm", "steps": K}``, a runtime
setting (:meth:`set_sampler`) that evaluation and benchmarks override. The sampler's loop is a
:class:`~policydistill.runtime.sampler.SamplerSpec` (:meth:`sampler_spec`), the implementation the
exported runtime runs too.

Export (:meth:`export_graph`) follows the runtime's denoiser contract: ``obs`` (n, n_obs_steps *
obs_dim) the raw observation window, oldest first; ``sample`` (n, horizon, act_dim) the noisy chunk
in normalised action space; ``timestep`` (n, 1) -> ``prediction`` (n, horizon, act_dim); the
description's ``sampler`` holds the noise schedule, the visited levels, the prediction type, the
clip range and the action unnormalisation and clipping, so a runtime without torch runs the loop.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch
from gymnasium import spaces
from torch import nn

from policydistill.graph import OBS, ExportGraph, TensorSpec
from policydistill.models.base import Stats
from policydistill.models.chunk import ChunkPolicy
from policydistill.models.denoisers import make_denoiser
from policydistill.models.noise import SAMPLERS, NoiseSchedule
from policydistill.runtime.sampler import SamplerSpec, sampler_levels


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
        self._loop = self.sampler_spec(kind, steps)
        self.sampler = {"kind": kind, "steps": int(steps)}
        return self

    def sampler_spec(self, kind: str | None = None, steps: int | None = None) -> SamplerSpec:
        """The sampling loop (default: the configured sampler) as a runtime :class:`SamplerSpec`, with the
        current action normalisation and the action bounds (where finite)."""
        kind = kind or self.sampler["kind"]
        if kind not in SAMPLERS:
            raise ValueError(f"unknown sampler '{kind}'; expected one of {sorted(SAMPLERS)}")
        levels = sampler_levels(self.schedule.steps, int(steps or self.sampler["steps"]))
        norm = self.action_normalizer
        low, high = self.action_space.low, self.action_space.high
        finite = bool(np.all(np.isfinite(low)) and np.all(np.isfinite(high)))
        return SamplerSpec(tuple(self.schedule.abar64.tolist()), tuple(levels),
                           tuple(norm.scale().tolist()), tuple(norm.offset().tolist()),
                           prediction=self.schedule.prediction, eta=SAMPLERS[kind],
                           clip_sample=self.schedule.clip_sample,
                           action_low=tuple(low.tolist()) if finite else None,
                           action_high=tuple(high.tolist()) if finite else None)

    # ---- torch path --------------------------------------------------------------------------

    def denoise(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """Raw denoiser output (x0 or eps) for x_t (n, H, A) at integer levels t (n,)."""
        return self.denoiser(x_t, t.float(), cond)

    def x0(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """The clean-chunk estimate (normalised, clipped) (n, H, A) at integer levels t (n,)."""
        return self.schedule.split(self.denoise(x_t, t, cond), x_t, self.schedule.abar_at(t))[0]

    def sample_from(self, cond: torch.Tensor, x: torch.Tensor, generator: torch.Generator | None,
                    loop: SamplerSpec | None = None) -> torch.Tensor:
        """Run the sampler ``loop`` (default the configured one) from the noise ``x`` (n, H, A); returns
        the normalised clean chunk (n, H, A)."""
        loop = loop or self._loop
        n = len(cond)
        for i, t in enumerate(loop.timesteps):
            pred = self.denoiser(x, torch.full((n,), float(t), device=x.device), cond)
            z = self.noise(n, generator) if loop.stochastic and i + 1 < loop.steps else None
            x = loop.step(i, x, pred, z)
        return x

    def sample_norm(self, cond: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        return self.sample_from(cond, self.noise(len(cond), generator), generator)

    # ---- training ----------------------------------------------------------------------------

    def training_noise(self, rng: np.random.Generator, n: int) -> dict[str, torch.Tensor]:
        """The DDPM loss's randomness for ``n`` rows, drawn from ``rng``: noise levels ``t`` (n,) uniform in
        ``0..T-1`` and noise ``eps`` (n, H, A)."""
        t = torch.as_tensor(rng.integers(0, self.schedule.steps, n), device=self.device)
        return {"t": t, "eps": self.noise_from(rng, n)}

    def compute_loss(self, batch: dict[str, torch.Tensor], loss_fn: Any = None) -> tuple[torch.Tensor, Stats]:
        """DDPM loss on ``batch``: windows ``window`` (b, n_obs, obs_dim), chunks ``chunk`` (b, H, A), noise
        levels ``t`` (b,) and noise ``eps`` (b, H, A) (:meth:`training_noise`): MSE of the denoiser's output
        at ``x_t`` to its target (clean chunk or noise)."""
        x0 = self.action_normalizer(batch["chunk"])
        t, eps = batch["t"], batch["eps"]
        pred = self.denoise(self.schedule.add_noise(x0, eps, t), t, self.cond(batch["window"]))
        loss = torch.nn.functional.mse_loss(pred, self.schedule.target(x0, eps))
        return loss, {"loss": loss.detach()}

    def export_graph(self) -> ExportGraph:
        """The denoiser as a graph with its sampler (see the module docstring)."""

        def example(graph: ExportGraph, n: int, generator: torch.Generator) -> tuple[torch.Tensor, ...]:
            obs = self.example_obs(n, generator, self.n_obs_steps).flatten(1)
            t = torch.randint(0, self.schedule.steps, (n, 1), generator=generator).float()
            return obs, torch.randn(n, self.horizon, self.act_dim, generator=generator), t

        shape = (self.horizon, self.act_dim)
        return ExportGraph(_DenoiserGraph(self),
                           (TensorSpec(OBS, (self.cond_dim,), "observation"), TensorSpec("sample", shape, "sample"),
                            TensorSpec("timestep", (1,), "timestep")),
                           (TensorSpec("prediction", shape, "prediction"),), example=example,
                           sampler=self.sampler_spec().to_json())

    # ---- config ------------------------------------------------------------------------------

    def config(self) -> dict[str, Any]:
        return {**self.base_config(), "denoiser": self.denoiser_kind, "denoiser_params": dict(self.denoiser_params),
                "noise": self.schedule.config(), "sampler": dict(self.sampler)}



class _DenoiserGraph(nn.Module):
    """obs window (n, n_obs*obs_dim), x_t (n, H, A), t (n, 1) -> the denoiser's prediction (n, H, A)."""

    def __init__(self, policy: DiffusionPolicy) -> None:
        super().__init__()
        self.policy = policy

    def forward(self, obs: torch.Tensor, sample: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        p = self.policy
        cond = p.cond(obs.reshape(-1, p.n_obs_steps, p.obs_dim))
        return p.denoiser(sample, timestep.reshape(-1), cond).reshape(-1, p.horizon, p.act_dim)


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

