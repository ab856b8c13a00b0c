"""Regression baseline (knowledge distillation of the sampler): one step from noise to the teacher's
K-step output.

Before training, ``pairs`` observation windows are drawn from the data with one noise chunk ``z``
each, and the teacher's ``teacher_steps``-step DDIM sample from that same ``z`` is computed (DDIM is
deterministic given ``z``). The student ``G(z, obs)``, initialised from the teacher at its noisiest
level, minimises ``||G(z, obs) - teacher_K(z, obs)||^2`` on minibatches of these pairs.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from policydistill.data.batches import Batch, take_rows
from policydistill.distill.onestep.base import OneStepAlgorithm, init_level
from policydistill.models.onestep import OneStepPolicy


class Regression(OneStepAlgorithm):
    def make_student(self) -> OneStepPolicy:
        return OneStepPolicy.from_teacher(self.teacher, stochastic=True, level=init_level(self.teacher, self.cfg))

    def prepare(self) -> None:
        """Draw the (cond, z, teacher output) pairs: ``pairs * teacher_steps`` teacher calls."""
        if self.pairs is None:
            self.pairs = self.teacher_pairs(self.cfg.pairs, self.k)

    def dataset(self) -> tuple[int, Any, np.ndarray | None]:
        """The pairs, uniformly: ``cond`` (P, cond_dim), noise ``z`` (P, H, A), teacher output ``y`` (P, H, A)."""
        assert self.pairs is not None
        return len(self.pairs[0]), take_rows(dict(zip(("cond", "z", "y"), self.pairs, strict=True))), None

    def student_loss(self, student: OneStepPolicy, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        loss = F.mse_loss(student.generate(batch["cond"], batch["z"]), batch["y"])
        return loss, {"loss": loss.detach()}


OneStepAlgorithm.variants["regression"] = Regression
