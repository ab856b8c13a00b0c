"""One-step chunk policy: a generator distilled from a diffusion policy, one network call per chunk.

The generator has the teacher's denoiser architecture evaluated at one fixed noise level ``level``::

    x0 = skip * z + out_scale * net(z, level, cond)          z ~ N(0, I)  (n, horizon, act_dim)

(``skip`` and ``out_scale`` are constants: 0 and 1 for distribution-matching and regression
students, the consistency parameterisation's values at ``level`` for consistency students). A
deterministic generator (``stochastic=False``) replaces ``z`` by a fixed chunk ``anchor`` (one
N(0, I) draw, seeded by ``seed``, saved with the weights), so it needs no noise and always gives the
same chunk for the same observations.

Export: :meth:`export_graph` maps ``obs`` (n, n_obs_steps * obs_dim), the raw observation window
oldest first (the runtime keeps it per env and fills it with the first observation after a reset),
[+ ``noise`` (n, horizon, act_dim) when stochastic] to ``chunk`` (n, horizon, act_dim).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from gymnasium import spaces
from torch import nn

from policydistill.graph import OBS, ExportGraph, TensorSpec
from policydistill.models.chunk import ChunkPolicy
from policydistill.models.denoisers import make_denoiser


class OneStepPolicy(ChunkPolicy):
    """A one-step generator of action chunks reading ``groups``."""

    def __init__(self, groups: Sequence[str], observation_space: spaces.Dict, action_space: spaces.Box,
                 n_obs_steps: int = 2, horizon: int = 16, n_action_steps: int = 4, seed: int = 0,
                 denoiser: str = "mlp", denoiser_params: dict[str, Any] | None = None, level: int = 99,
                 skip: float = 0.0, out_scale: float = 1.0, stochastic: bool = True) -> None:
        super().__init__(groups, observation_space, action_space, n_obs_steps, horizon, n_action_steps, seed)
        self.denoiser_kind, self.denoiser_params = denoiser, dict(denoiser_params or {})
        self.net = make_denoiser(denoiser, self.act_dim, self.horizon, self.cond_dim, self.denoiser_params)
        self.level, self.skip, self.out_scale = int(level), float(skip), float(out_scale)
        self.stochastic = bool(stochastic)
        g = torch.Generator().manual_seed(self.seed)
        anchor = None if self.stochastic else torch.randn(self.horizon, self.act_dim, generator=g)
        self.anchor: torch.Tensor | None
        self.register_buffer("anchor", anchor)

    @classmethod
    def from_teacher(cls, teacher: Any, stochastic: bool = True, skip: float = 0.0, out_scale: float = 1.0,
                     level: int | None = None) -> OneStepPolicy:
        """A student with ``teacher``'s (a :class:`DiffusionPolicy`) spaces, chunking, normalisers and
        denoiser weights, at the teacher's noisiest level unless ``level`` is given."""
        student = cls(teacher.groups, teacher.observation_space, teacher.action_space, teacher.n_obs_steps,
                      teacher.horizon, teacher.n_action_steps, teacher.seed, teacher.denoiser_kind,
                      teacher.denoiser_params, teacher.schedule.steps - 1 if level is None else level, skip,
                      out_scale, stochastic).to(teacher.device)
        student.net.load_state_dict(teacher.denoiser.state_dict())
        student.obs_normalizer.load_state_dict(teacher.obs_normalizer.state_dict())
        student.action_normalizer.load_state_dict(teacher.action_normalizer.state_dict())
        return student

    # ---- torch path --------------------------------------------------------------------------

    def generate(self, cond: torch.Tensor, z: torch.Tensor | None,
                 level_embedding: torch.Tensor | None = None) -> torch.Tensor:
        """Normalised chunk (n, H, A) for ``cond`` (n, cond_dim) from noise ``z`` (n, H, A); a deterministic
        generator ignores ``z`` (may be None) and uses its anchor. ``level_embedding`` (1, time_dim): the
        denoiser's embedding of ``level``, when computed beforehand (:meth:`constants`)."""
        if self.anchor is not None:
            z = self.anchor.expand(cond.shape[0], self.horizon, self.act_dim)
        if z is None:
            raise ValueError("a stochastic one-step policy needs noise z (n, horizon, act_dim)")
        if level_embedding is None:
            t = torch.ones_like(cond[:, 0]) * float(self.level)  # (n,), traced with a dynamic batch size
        else:
            t = level_embedding.expand(cond.shape[0], -1)
        out = self.out_scale * self.net(z, t, cond)
        return out + self.skip * z if self.skip else out

    def sample_norm(self, cond: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        z = self.noise(len(cond), generator) if self.stochastic else None
        return self.generate(cond, z, self.constants()["level"])

    def constant_sources(self) -> list[torch.Tensor]:
        return [*super().constant_sources(), *self.net.time.weights()]

    def derive_constants(self) -> dict[str, Any]:
        """The normalisers' affine maps and the embedding of the generator's noise level (1, time_dim)."""
        level = torch.full((1,), float(self.level), device=self.device)
        return {**super().derive_constants(), "level": self.net.time(level)}

    def export_graph(self) -> ExportGraph:
        """obs window [+ noise] -> chunk (see the module docstring)."""
        chunk = (self.horizon, self.act_dim)
        inputs = [TensorSpec(OBS, (self.cond_dim,), "observation")]
        if self.stochastic:
            inputs.append(TensorSpec("noise", chunk, "noise"))

        def example(graph: ExportGraph, n: int, generator: torch.Generator) -> tuple[torch.Tensor, ...]:
            obs = self.example_obs(n, generator, self.n_obs_steps).flatten(1)
            return (obs, torch.randn(n, *chunk, generator=generator)) if self.stochastic else (obs,)

        return ExportGraph(_OneStepGraph(self), tuple(inputs), (TensorSpec("chunk", chunk, "chunk"),), example=example)

    # ---- config ------------------------------------------------------------------------------

    def config(self) -> dict[str, Any]:
        return {**self.base_config(), "denoiser": self.denoiser_kind, "denoiser_params": dict(self.denoiser_params),
                "level": self.level, "skip": self.skip, "out_scale": self.out_scale, "stochastic": self.stochastic}



class _OneStepGraph(nn.Module):
    """The exported path: normalisation, one generator call, unnormalisation and clipping."""

    def __init__(self, policy: OneStepPolicy) -> None:
        super().__init__()
        self.policy = policy

    def forward(self, obs: torch.Tensor, *noise: torch.Tensor) -> torch.Tensor:
        p = self.policy
        cond = p.cond(obs.reshape(-1, p.n_obs_steps, p.obs_dim))
        chunk = p.to_actions(p.generate(cond, noise[0] if p.stochastic else None))
        return chunk.reshape(-1, p.horizon, p.act_dim)  # a constant shape keeps the exported dims static
