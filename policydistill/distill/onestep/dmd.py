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

from policydistill.data.batches import Batch
from policydistill.data.sampling import RowSampler
from policydistill.distill.algorithm import Context
from policydistill.distill.fit import Aux, adam
from policydistill.distill.onestep.base import OneStepAlgorithm, OneStepConfig, init_level
from policydistill.models.onestep import OneStepPolicy


class DistributionMatching(OneStepAlgorithm):
    """``dmd``: DMD with an auxiliary score network and a stochastic generator; ``dmd_det``: the deterministic
    variant."""

    one_process = {"dmd": "onestep algo 'dmd' trains its auxiliary score network for aux_updates steps with an "
                          "optimiser of its own between generator steps, in one process; use nproc=1, or dmd_det, "
                          "consistency or regression"}

    def __init__(self, cfg: OneStepConfig, ctx: Context) -> None:
        self.stochastic = cfg.algo == "dmd"
        super().__init__(cfg, ctx)
        steps = self.teacher.schedule.steps
        self.t_low, self.t_high = round(cfg.t_min * (steps - 1)), round(cfg.t_max * (steps - 1))
        self.aux_net = None
        if self.stochastic:
            self.aux_net = copy.deepcopy(self.teacher.denoiser).train().requires_grad_(True)
            self.aux_opt = adam(self.aux_net, cfg.aux_lr)

    def make_student(self) -> OneStepPolicy:
        return OneStepPolicy.from_teacher(self.teacher, stochastic=self.stochastic,
                                          level=init_level(self.teacher, self.cfg))

    def prepare(self) -> None:
        if self.cfg.reg_weight > 0 and self.pairs is None:
            assert self.data is not None  # a deterministic generator needs one pair per window at most
            n_pairs = self.cfg.pairs if self.stochastic else min(self.cfg.pairs, len(self.data))
            self.pairs = self.teacher_pairs(n_pairs, self.k, self.student.anchor)

    def randoms(self, rng: np.random.Generator, n: int) -> Batch:
        """Per row: diffusion level ``t`` in [t_low, t_high] and noise ``eps`` of the generated chunk, the
        generator's noise ``z`` (stochastic) and a ``pair`` index (``reg_weight`` > 0)."""
        device = self.teacher.device
        out = {"t": torch.as_tensor(rng.integers(self.t_low, self.t_high + 1, n), device=device),
               "eps": self.teacher.noise_from(rng, n)}
        if self.stochastic:
            out["z"] = self.teacher.noise_from(rng, n)
        if self.pairs is not None:
            out["pair"] = torch.as_tensor(rng.integers(0, len(self.pairs[0]), n), device=device)
        return out

    def aux_x0(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        assert self.aux_net is not None
        sched = self.teacher.schedule
        return sched.split(self.aux_net(x_t, t.float(), cond), x_t, sched.abar_at(t))[0]

    def student_loss(self, student: OneStepPolicy, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        cond, _ = self.teacher_view(batch)
        a = student.generate(cond, batch.get("z"))
        t = batch["t"]
        x_t = self.teacher.schedule.add_noise(a.detach(), batch["eps"], t)
        real = self.teacher_x0(x_t, t, cond)
        with torch.no_grad():
            fake = self.aux_x0(x_t, t, cond) if self.aux_net is not None else a.detach()
            weight = 1.0 / (a.detach() - real).abs().mean(dim=(1, 2), keepdim=True).clamp(min=1e-4)
            grad = (fake - real) * weight
        loss = 0.5 * F.mse_loss(a, (a - grad).detach())
        stats = {"dmd": loss.detach(), "score_gap": (fake - real).abs().mean()}
        if self.pairs is not None:
            p_cond, p_z, p_y = (p[batch["pair"]] for p in self.pairs)
            reg = F.mse_loss(student.generate(p_cond, p_z), p_y)
            loss = loss + self.cfg.reg_weight * reg
            stats["regression"] = reg.detach()
        return loss, {"loss": loss.detach(), **stats}

    def aux_loss(self, rng: np.random.Generator) -> torch.Tensor:
        """Diffusion loss of the auxiliary denoiser on the generator's current (detached) chunks, at levels
        uniform over all of the teacher's; its rows and noise drawn from ``rng``."""
        rows = torch.as_tensor(self._aux_rows(rng, self.cfg.batch_size), device=self.teacher.device)
        batch = {**self._aux_take(rows), **self.randoms(rng, self.cfg.batch_size)}
        cond, _ = self.teacher_view(batch)
        with torch.no_grad():
            a = self.student.generate(cond, batch.get("z"))
        t = torch.as_tensor(rng.integers(0, self.teacher.schedule.steps, len(a)), device=a.device)
        x_t = self.teacher.schedule.add_noise(a, batch["eps"], t)
        assert self.aux_net is not None
        return F.mse_loss(self.aux_net(x_t, t.float(), cond), a)

    def aux(self) -> Aux | None:
        """``aux_updates`` steps of the auxiliary denoiser before each generator step (stochastic variant), so
        that it follows the generator (at the start it equals the teacher: no signal yet)."""
        if self.aux_net is None:
            return None
        n, self._aux_take, weights = self.dataset()
        self._aux_rows = RowSampler(n, weights)
        return Aux(self.aux_net, self.aux_loss, self.aux_opt, self.cfg.aux_lr, self.cfg.aux_updates)


OneStepAlgorithm.variants.update(dmd=DistributionMatching, dmd_det=DistributionMatching)
