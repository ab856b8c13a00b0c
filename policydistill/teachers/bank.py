"""A bank of per-task teachers that routes each env to the teacher of its task."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from policydistill.policy import Teacher
from policydistill.teachers.stacked import StackedMLPs
from policydistill.types import TASK, ActionLabel, ObsGroups


class TeacherBank:
    """Teacher ``i`` acts for the envs whose ``task`` one-hot (n, n_tasks) has its argmax at ``i``.

    ``act`` and ``label`` call each teacher once per batch, on its own rows only, and reassemble
    the results in env order; frozen MLP teachers of one shape are instead run as one batched network
    (:class:`StackedMLPs`) for ``label`` and deterministic ``act``. ``groups`` is the union of the teachers'
    groups plus ``task``. A stateful teacher sees its rows in env order, so envs should keep their task across
    steps.
    """

    def __init__(self, teachers: Sequence[Teacher]) -> None:
        if not teachers:
            raise ValueError("TeacherBank needs at least one teacher")
        self.teachers = list(teachers)
        groups: list[str] = []
        for t in self.teachers:
            groups += [g for g in t.groups if g not in groups]
        self.groups: tuple[str, ...] = (*groups, TASK) if TASK not in groups else tuple(groups)
        self._rows: list[np.ndarray] | None = None
        self.stacked = StackedMLPs.of(self.teachers)

    def route(self, obs: ObsGroups) -> list[np.ndarray]:
        """Row indices (into the batch) for each teacher: a list of int arrays, one per teacher."""
        if TASK not in obs:
            raise KeyError(f"TeacherBank needs the '{TASK}' observation group; got {sorted(obs)}")
        task = np.asarray(obs[TASK])
        if task.ndim != 2:
            raise ValueError(f"'{TASK}' group must be a one-hot (n_envs, n_tasks), got shape {task.shape}")
        index = np.argmax(task, axis=1)
        unknown = sorted({int(i) for i in index if i >= len(self.teachers)})
        if unknown:
            n = len(self.teachers)
            raise ValueError(f"no teacher for task index {unknown}: the bank has {n} (tasks 0..{n - 1})")
        self._rows = [np.flatnonzero(index == i) for i in range(len(self.teachers))]
        return self._rows

    @staticmethod
    def _rows_of(obs: ObsGroups, teacher: Teacher, rows: np.ndarray) -> dict[str, np.ndarray]:
        return {g: np.asarray(obs[g])[rows] for g in teacher.groups}

    def act(self, obs: ObsGroups, deterministic: bool = True) -> np.ndarray:
        """obs {group: (n, dim)} -> actions (n, act_dim), each row from its task's teacher."""
        if deterministic and self.stacked is not None:
            return self.stacked.label(obs, self.route(obs)).mean
        out: np.ndarray | None = None
        for teacher, rows in zip(self.teachers, self.route(obs), strict=True):
            if len(rows) == 0:
                continue
            a = np.asarray(teacher.act(self._rows_of(obs, teacher, rows), deterministic=deterministic))
            if out is None:
                out = np.empty((len(obs[TASK]), *a.shape[1:]), dtype=np.float32)
            if a.shape[1:] != out.shape[1:]:
                raise ValueError(f"teachers disagree on the action shape: {a.shape[1:]} vs {out.shape[1:]}")
            out[rows] = a
        if out is None:
            raise ValueError("TeacherBank got an empty batch")
        return out

    def label(self, obs: ObsGroups) -> ActionLabel:
        """Each row labelled by its task's teacher; ``std`` only if every teacher used gives one."""
        if self.stacked is not None:
            return self.stacked.label(obs, self.route(obs))
        means: np.ndarray | None = None
        stds: np.ndarray | None = None
        has_std = True
        for teacher, rows in zip(self.teachers, self.route(obs), strict=True):
            if len(rows) == 0:
                continue
            lab = teacher.label(self._rows_of(obs, teacher, rows))
            if means is None:
                means = np.empty((len(obs[TASK]), lab.mean.shape[1]), dtype=np.float32)
                stds = np.empty_like(means)
            if lab.mean.shape[1] != means.shape[1]:
                raise ValueError(f"teachers disagree on the action dim: {lab.mean.shape[1]} vs "
                                 f"{means.shape[1]}")
            means[rows] = lab.mean
            if lab.std is None:
                has_std = False
            else:
                stds[rows] = lab.std
        if means is None or stds is None:
            raise ValueError("TeacherBank got an empty batch")
        return ActionLabel(mean=means, std=stds if has_std else None)

    def advantage(self, obs: ObsGroups, actions: np.ndarray) -> np.ndarray:
        """Each row's ``actions`` (n, act_dim) judged by its task's teacher's critic: (n,) (see
        :meth:`policydistill.models.mlp.MLPPolicy.advantage`)."""
        out = np.zeros(len(obs[TASK]), dtype=np.float32)
        for teacher, rows in zip(self.teachers, self.route(obs), strict=True):
            if len(rows):
                out[rows] = teacher.advantage(self._rows_of(obs, teacher, rows), actions[rows])
        return out

    def reset(self, env_mask: np.ndarray | None = None) -> None:
        """Reset every teacher; with a mask, each teacher gets the part for its rows of the last batch. A reset
        without a mask also forgets the last batch's routing (a new batch of envs may follow)."""
        if env_mask is None:
            self._rows = None
        for i, teacher in enumerate(self.teachers):
            if env_mask is None or self._rows is None:
                teacher.reset(None)
            else:
                sub = np.asarray(env_mask, dtype=bool)[self._rows[i]]
                if sub.any():
                    teacher.reset(sub)
