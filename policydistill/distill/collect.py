"""Vectorised collection for distillation: per env and step, a coin with probability ``beta`` decides
whether the teacher or the student acts; the teacher's label is recorded on every step either way.

Teacher and student are each called once per step on the whole batch. The student is handed only
its own observation groups, so a student configured without ``privileged`` never receives it. A
stateless student is called only on steps where it acts somewhere; a stateful one (``stateful`` True:
history or recurrent) on every step, so its history is the one it would have at deployment.
"""

from __future__ import annotations

import numpy as np

from policydistill.distill.schedules import draw_actor
from policydistill.eval.rollout import EpisodeRecord, rollout
from policydistill.policy import Policy, Teacher
from policydistill.suite import Suite
from policydistill.types import select_groups

TEACHER, STUDENT = 0, 1


def collect(suite: Suite, tasks: list[int], teacher: Teacher, student: Policy | None, beta: float,
            episodes_per_task: int, n_envs: int, seed: int, rng: np.random.Generator) -> list[EpisodeRecord]:
    """Episodes with per-step ``actor`` (0 teacher, 1 student), ``label_mean`` and, when the teacher has
    one, ``label_std``; ``action`` is what was executed. ``student`` None means the teacher always acts."""
    stateful = bool(getattr(student, "stateful", False))

    def act(obs: dict[str, np.ndarray]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        label = teacher.label(obs)
        n = len(label.mean)
        teacher_acts = np.ones(n, dtype=bool) if student is None else draw_actor(beta, n, rng)
        actions = label.mean
        if stateful or not teacher_acts.all():
            own = np.asarray(student.act(select_groups(obs, student.groups), deterministic=True))
            actions = np.where(teacher_acts[:, None], label.mean, own).astype(np.float32)
        extras = {"actor": np.where(teacher_acts, TEACHER, STUDENT).astype(np.uint8),
                  "label_mean": label.mean.astype(np.float32)}
        if label.std is not None:
            extras["label_std"] = label.std.astype(np.float32)
        return actions, extras

    def reset(mask: np.ndarray) -> None:
        teacher.reset(mask)
        if student is not None:
            student.reset(mask)

    teacher.reset(None)
    if student is not None:
        student.reset(None)
    return rollout(suite, tasks, act, episodes_per_task, n_envs=n_envs, seed=seed, on_reset=reset, record=True)
