"""Regression baseline (knowledge distillation of the sampler): one step from noise to the teacher's
K-step output.

Before training, ``pairs`` observation windows are drawn from the data with one noise chunk ``z``
each, and the teacher's ``teacher_steps``-step DDIM sample from that same ``z`` is computed (DDIM is
deterministic given ``z``). The student ``G(z, obs)``, initialised from the teacher at its noisiest
level, minimises ``||G(z, obs) - teacher_K(z, obs)||^2`` on minibatches of these pairs.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from policydistill.config import OneStepConfig
from policydistill.data.chunks import ChunkWindows
from policydistill.distill.onestep import OneStepAlgo
from policydistill.models.diffusion import DiffusionPolicy
from policydistill.models.onestep import OneStepPolicy


class Regression(OneStepAlgo):
    def __init__(self, teacher: DiffusionPolicy, cfg: OneStepConfig, data: ChunkWindows, batch_size: int,
                 rng: np.random.Generator) -> None:
        student = OneStepPolicy.from_teacher(teacher, stochastic=True, level=self.init_level(teacher, cfg))
        super().__init__(teacher, cfg, data, batch_size, rng, student)
        self.k = cfg.teacher_steps or teacher.sampler["steps"]
        self.pairs: tuple[torch.Tensor, ...] | None = None

    def prepare(self) -> None:
        """Draw the (cond, z, teacher output) pairs: ``pairs * teacher_steps`` teacher calls."""
        self.pairs = self.teacher_pairs(self.cfg.pairs, self.k)

    def dataset(self) -> dict[str, torch.Tensor]:
        """The pairs: ``cond`` (P, cond_dim), noise ``z`` (P, H, A), teacher output ``y`` (P, H, A)."""
        if self.pairs is None:
            self.prepare()
        assert self.pairs is not None
        return dict(zip(("cond", "z", "y"), self.pairs, strict=True))

    def sample_weights(self) -> np.ndarray | None:
        return None  # uniform over the pairs

    def student_loss(self, student: OneStepPolicy, batch: dict[str, torch.Tensor]
                     ) -> tuple[torch.Tensor, dict[str, float]]:
        loss = F.mse_loss(student.generate(batch["cond"], batch["z"]), batch["y"])
        return loss, {"regression": loss.item()}
