"""Consistency distillation: a student that maps any noise level to the clean chunk in one step.

With ``x~ = x_t / sqrt(abar_t)`` (the variance-exploding view, noise ``sigma_t = sqrt((1 - abar_t) /
abar_t)``) the student is parameterised so that it is the identity at the lowest level::

    f(x_t, t) = c_skip(t) x~ + (1 - c_skip(t)) net(x_t, t, obs),
    c_skip(t) = sigma_data^2 / ((sigma_t - sigma_min)^2 + sigma_data^2)

``net`` starts as the teacher's denoiser. The levels are cut into ``ode_steps`` intervals
``tau_0 = 0 < ... < tau_N = T-1``; each update noises a teacher chunk to ``tau_{n+1}``, takes one
teacher DDIM (probability-flow ODE) step to ``tau_n`` and pulls ``f(x_{tau_{n+1}})`` towards an EMA
copy's ``f(x_{tau_n})`` (``target_ema``). At ``tau_N`` the student is the one-step policy
``skip * z + out_scale * net(z, T-1, obs)``.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import torch
import torch.nn.functional as F

from policydistill.data.batches import Batch
from policydistill.distill.algorithm import Context
from policydistill.distill.fit import Ema
from policydistill.distill.onestep.base import OneStepAlgorithm, OneStepConfig
from policydistill.models import freeze
from policydistill.models.onestep import OneStepPolicy

SIGMA_DATA = 0.5


class ConsistencyDistillation(OneStepAlgorithm):
    def __init__(self, cfg: OneStepConfig, ctx: Context) -> None:
        super().__init__(cfg, ctx)
        steps = self.teacher.schedule.steps
        self.c_table = torch.as_tensor([self.c_skip(int(t)) for t in range(steps)], dtype=torch.float32,
                                       device=self.teacher.device)
        self.target: torch.nn.Module | None = None
        self.target_ema: Ema | None = None

    def make_student(self) -> OneStepPolicy:
        steps = self.teacher.schedule.steps
        self.grid = np.unique(np.round(np.linspace(0, steps - 1, min(self.cfg.ode_steps, steps - 1) + 1)).astype(int))
        abar = self.teacher.schedule.abar64.numpy()
        self.sigma = np.sqrt((1 - abar) / abar)
        self.sigma_min = float(self.sigma[self.grid[0]])
        last = int(self.grid[-1])
        c = self.c_skip(last)
        self.grid = torch.as_tensor(self.grid, device=self.teacher.device)
        return OneStepPolicy.from_teacher(self.teacher, stochastic=True, skip=c / math.sqrt(abar[last]),
                                          out_scale=1.0 - c, level=last)

    def c_skip(self, t: int) -> float:
        return SIGMA_DATA ** 2 / ((float(self.sigma[t]) - self.sigma_min) ** 2 + SIGMA_DATA ** 2)

    def prepare(self) -> None:
        if self.target is None:
            self.target = freeze(copy.deepcopy(self.student.net))
            self.target_ema = Ema(self.target, self.student.net, self.cfg.target_ema, warmup=False)

    def f(self, net: torch.nn.Module, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """The consistency function at levels t (n,): x_t (n, H, A) -> clean chunk estimate (n, H, A)."""
        c = self.c_table[t].view(-1, 1, 1)
        return c * x_t / self.teacher.schedule.abar_at(t).sqrt() + (1 - c) * net(x_t, t.float(), cond)

    def randoms(self, rng: np.random.Generator, n: int) -> Batch:
        """Per row: the ``interval`` index n (tau_n -> tau_{n+1}) and the noise ``eps`` (H, A)."""
        interval = torch.as_tensor(rng.integers(0, len(self.grid) - 1, n), device=self.teacher.device)
        return {"interval": interval, "eps": self.teacher.noise_from(rng, n)}

    def student_loss(self, student: OneStepPolicy, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        assert self.target is not None, "prepare() first"
        cond, x0 = self.teacher_view(batch)
        n = batch["interval"]
        t_hi, t_lo = self.grid[n + 1], self.grid[n]
        sched = self.teacher.schedule
        x_hi = sched.add_noise(x0, batch["eps"], t_hi)
        x0_teacher = self.teacher_x0(x_hi, t_hi, cond)
        with torch.no_grad():
            a_hi, a_lo = sched.abar_at(t_hi), sched.abar_at(t_lo)
            eps = (x_hi - a_hi.sqrt() * x0_teacher) / (1 - a_hi).sqrt()
            x_lo = a_lo.sqrt() * x0_teacher + (1 - a_lo).sqrt() * eps
            target = self.f(self.target, x_lo, t_lo, cond)
        loss = F.mse_loss(self.f(student.net, x_hi, t_hi, cond), target)
        return loss, {"loss": loss.detach()}

    def after_step(self) -> None:
        assert self.target_ema is not None
        self.target_ema.update()

    def state_modules(self) -> dict[str, torch.nn.Module]:
        self.prepare()
        return {"target": self.target}


OneStepAlgorithm.variants["consistency"] = ConsistencyDistillation
