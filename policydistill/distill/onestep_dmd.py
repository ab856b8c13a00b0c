"""Distribution matching along the diffusion chain (as in One-Step Diffusion Policy, DMD).

The one-step generator ``G(z, obs)`` (initialised from the teacher at its noisiest level) is trained
to minimise ``E_t KL(p_G,t || p_teacher,t)`` between its chunk distribution and the teacher's, both
diffused to noise level ``t`` (``t`` uniform in [t_min, t_max] of the levels). The KL's gradient
with respect to a generated chunk ``a`` is the score difference at ``x_t = sqrt(abar) a +
sqrt(1 - abar) eps``, which with clean-chunk estimates is proportional to::

    g = (x0_fake(x_t, t) - x0_teacher(x_t, t)) / mean|a - x0_teacher(x_t, t)|

(the normalisation of DMD makes the step size independent of ``t``). The update follows ``g`` through
the generator: loss ``0.5 * ||a - stopgrad(a - g)||^2``.

- ``dmd`` (stochastic generator): ``x0_fake`` is an auxiliary denoiser, initialised from the
  teacher and trained with the diffusion loss on the generator's (detached) chunks,
  ``aux_updates`` times per generator update;
- ``dmd_det`` (deterministic generator, a fixed anchor chunk instead of noise): the generator's
  chunk distribution is a point mass, whose diffused clean-chunk estimate is ``a`` itself, so no
  auxiliary network is needed.

As in DMD, ``reg_weight`` > 0 adds a regression term ``||G(z, obs) - teacher_K(z, obs)||^2`` on
``pairs`` fixed (noise, teacher K-step DDIM output) pairs (the deterministic variant's noise is its
anchor). Mode-seeking alone cannot leave a generator output that sits exactly between two
symmetric modes (the KL gradient vanishes there by symmetry); the pairs give every observation a
committed target. ``reg_weight=0`` is pure distribution matching.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
import torch.nn.functional as F

from policydistill.config import OneStepConfig
from policydistill.data.chunks import ChunkWindows
from policydistill.distill.diffusion import chunk_noise
from policydistill.distill.onestep import OneStepAlgo
from policydistill.models.diffusion import DiffusionPolicy
from policydistill.models.onestep import OneStepPolicy


class DistributionMatching(OneStepAlgo):
    """``stochastic``: DMD with an auxiliary score network; else the deterministic variant."""

    def __init__(self, teacher: DiffusionPolicy, cfg: OneStepConfig, data: ChunkWindows, batch_size: int,
                 rng: np.random.Generator, stochastic: bool = True) -> None:
        student = OneStepPolicy.from_teacher(teacher, stochastic=stochastic, level=self.init_level(teacher, cfg))
        super().__init__(teacher, cfg, data, batch_size, rng, student)
        steps = teacher.schedule.steps
        self.t_low, self.t_high = round(cfg.t_min * (steps - 1)), round(cfg.t_max * (steps - 1))
        self.k = cfg.teacher_steps or teacher.sampler["steps"]
        # a deterministic generator needs one pair per window at most
        self.n_pairs = cfg.pairs if stochastic else min(cfg.pairs, len(data))
        self.pairs: tuple[torch.Tensor, ...] | None = None
        self.aux = None
        if stochastic:
            self.aux = copy.deepcopy(teacher.denoiser).train().requires_grad_(True)
            self.aux_opt = torch.optim.Adam(self.aux.parameters(), lr=cfg.aux_lr)

    def optimisers(self) -> list[tuple[torch.optim.Optimizer, float]]:
        extra = [(self.aux_opt, self.cfg.aux_lr)] if self.aux is not None else []
        return [*super().optimisers(), *extra]

    def prepare(self) -> None:
        if self.cfg.reg_weight > 0:
            self.pairs = self.teacher_pairs(self.n_pairs, self.k, self.student.anchor)

    def randoms(self, rng: np.random.Generator, n: int) -> dict[str, torch.Tensor]:
        """Per row: diffusion level ``t`` in [t_low, t_high] and noise ``eps`` of the generated chunk, the
        generator's noise ``z`` (stochastic) and a ``pair`` index (``reg_weight`` > 0)."""
        device = self.teacher.device
        out = {"t": torch.as_tensor(rng.integers(self.t_low, self.t_high + 1, n), device=device),
               "eps": chunk_noise(self.teacher, rng, n)}
        if self.student.stochastic:
            out["z"] = chunk_noise(self.teacher, rng, n)
        if self.cfg.reg_weight > 0:
            out["pair"] = torch.as_tensor(rng.integers(0, self.n_pairs, n), device=device)
        return out

    def aux_x0(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        assert self.aux is not None
        sched = self.teacher.schedule
        return sched.split(self.aux(x_t, t.float(), cond), x_t, sched.abar_at(t))[0]

    def student_loss(self, student: OneStepPolicy, batch: dict[str, torch.Tensor]
                     ) -> tuple[torch.Tensor, dict[str, float]]:
        cond, _ = self.teacher_view(batch)
        a = student.generate(cond, batch.get("z"))
        t = batch["t"]
        x_t = self.teacher.schedule.add_noise(a.detach(), batch["eps"], t)
        real = self.teacher_x0(x_t, t, cond)
        with torch.no_grad():
            fake = self.aux_x0(x_t, t, cond) if self.aux is not None else a.detach()
            weight = 1.0 / (a.detach() - real).abs().mean(dim=(1, 2), keepdim=True).clamp(min=1e-4)
            grad = (fake - real) * weight
        loss = 0.5 * F.mse_loss(a, (a - grad).detach())
        stats = {"dmd": loss.item(), "score_gap": (fake - real).abs().mean().item()}
        if self.cfg.reg_weight > 0:
            if self.pairs is None:
                self.prepare()
            assert self.pairs is not None
            p_cond, p_z, p_y = (p[batch["pair"]] for p in self.pairs)
            reg = F.mse_loss(student.generate(p_cond, p_z), p_y)
            loss = loss + self.cfg.reg_weight * reg
            stats["regression"] = reg.item()
        return loss, stats

    def aux_loss(self) -> torch.Tensor:
        """Diffusion loss of the auxiliary denoiser on the generator's current (detached) chunks, at levels
        uniform over all of the teacher's."""
        batch = self.sample()
        cond, _ = self.teacher_view(batch)
        with torch.no_grad():
            a = self.student.generate(cond, batch.get("z"))
        t = torch.as_tensor(self.rng.integers(0, self.teacher.schedule.steps, len(a)), device=a.device)
        x_t = self.teacher.schedule.add_noise(a, batch["eps"], t)
        assert self.aux is not None
        return F.mse_loss(self.aux(x_t, t.float(), cond), a)

    def before_student(self) -> dict[str, float]:
        """``aux_updates`` steps of the auxiliary denoiser (stochastic variant), so that it follows the
        generator before the generator's step (at the start it equals the teacher: no signal yet)."""
        if self.aux is None:
            return {}
        losses = []
        for _ in range(self.cfg.aux_updates):
            loss = self.aux_loss()
            self.aux_opt.zero_grad(set_to_none=True)
            loss.backward()
            self.aux_opt.step()
            losses.append(loss.item())
        return {"aux": float(np.mean(losses))}
