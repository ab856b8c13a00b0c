"""The contract every distillation method follows: one class per method, the same small method set.

The runner (:mod:`policydistill.distill.runner`) owns the rounds, resume, evaluation, checkpoints,
``distill.json``, TensorBoard, progress, ``stop_score`` and the collector. Per round it asks the method what
to collect (:meth:`Algorithm.collect`, a :class:`~policydistill.distill.collect.CollectPlan`, or None for a
method that collects nothing this round), runs the plan on its collector into the run's episode store,
then lets the method learn from the store (:meth:`Algorithm.update`, through the one fit loop
:func:`~policydistill.distill.fit.fit`), evaluates :meth:`Algorithm.policy` and checkpoints it with
:meth:`Algorithm.state_dict`. Adding a method means writing one file: a config dataclass (validated in
``__post_init__``; a key it does not read is an error) and an :class:`Algorithm` subclass, registered in
:mod:`policydistill.distill.methods`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch

from policydistill.data.shards import EpisodeStore
from policydistill.distill.collect import CollectPlan
from policydistill.distill.fit import FitJob, FitResult
from policydistill.models.base import TorchPolicy
from policydistill.models.students import StudentConfig
from policydistill.policy import Policy
from policydistill.suites import Suite
from policydistill.teachers import TeacherBank

FitWith = Callable[[FitJob], FitResult]
"""Runs a fit job with the runner's generator, checkpoint file, logging and progress."""


@dataclass
class Context:
    """What a method is built from: the suite, one teacher per task, the student config (for methods that
    train one), the device, the run's seed and what its teachers were given as (``teachers_spec``)."""

    suite: Suite
    teachers: dict[str, Policy]
    student: StudentConfig
    device: torch.device
    seed: int
    teachers_spec: str = ""

    @functools.cached_property
    def bank(self) -> TeacherBank:
        """The teachers as one bank routing each env to its task's teacher."""
        return TeacherBank([self.teachers[n] for n in self.suite.task_names])


class Algorithm:
    """A distillation method. ``config``: its config dataclass; ``uses_student``: it builds its student from
    the run's ``student`` config (else that config must stay at its defaults); ``collects``: it collects
    through the runner's collector (``collector``, ``ray``)."""

    name: ClassVar[str]
    config: ClassVar[type]
    uses_student: ClassVar[bool] = True
    collects: ClassVar[bool] = True
    ray_collects: ClassVar[bool] = True
    """Its collection plans can run on Ray rollout actors (``collector=ray``)."""
    learns_offline: ClassVar[bool] = False
    """It can learn from ``method.data`` alone, without teachers (``teachers=none``,
    :mod:`policydistill.distill.offline`); the context then holds no teachers."""
    not_read: ClassVar[str] = ""
    """Why the keys ``uses_student``/``collects`` exclude do not apply, for the error that refuses them."""

    def __init__(self, cfg: Any, ctx: Context) -> None:
        self.cfg, self.ctx = cfg, ctx

    @classmethod
    def build(cls, cfg: Any, ctx: Context) -> Algorithm:
        """The algorithm for ``cfg`` (a method with variants picks the class here)."""
        return cls(cfg, ctx)

    @property
    def rounds(self) -> int:
        return int(self.cfg.rounds)

    def run_info(self) -> dict[str, Any]:
        """Numbers about the run as a whole for ``distill.json`` (``info``)."""
        return {}

    def reference(self) -> dict[str, Policy]:
        """Per task, what the student's score is measured against (the teachers)."""
        return self.ctx.teachers

    def collect(self, round: int, prev: dict[str, Any] | None, teacher_return: float) -> CollectPlan | None:
        """What to collect before round ``round``'s update (``prev``: the last row of distill.json,
        ``teacher_return``: the teachers' mean return), or None."""
        raise NotImplementedError

    def update(self, store: EpisodeStore | None, round: int, fit_with: FitWith) -> dict[str, Any]:
        """Learn from the stored episodes; returns ``loss`` (float), ``losses`` (its parts), ``updates`` and,
        for a method that steps envs itself, ``env_steps`` and ``labels``; ``info`` holds anything else."""
        raise NotImplementedError

    def fit_job(self, store: EpisodeStore, round: int, steps: int | None = None, batch_size: int | None = None,
                lr: float | None = None) -> FitJob:
        """The fit job of round ``round``'s update (budget overridable), which ``train-student`` also runs on a
        finished run under DDP; methods that cannot say so."""
        raise ValueError(f"method '{self.name}' does not train from stored episodes with the fit loop")

    @classmethod
    def one_process_only(cls, cfg: Any) -> str | None:
        """Why ``cfg``'s fit job cannot run on several processes (DDP), or None when it can."""
        return None

    def policy(self) -> TorchPolicy:
        """The student: evaluated every round and saved as the run's bundle."""
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        """Everything beyond the student's bundle needed to continue exactly (optimisers, EMA, critics)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""

    def close(self) -> None:
        """Release what the method holds open."""


def stream(seed: int, round: int, purpose: int) -> np.random.Generator:
    """The generator of one purpose (1 collection, 2 training, ...) in one round of a run: the same on a
    rerun or a resume, independent of what earlier rounds drew."""
    return np.random.default_rng([seed, round, purpose])
