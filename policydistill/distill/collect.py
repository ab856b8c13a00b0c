"""Vectorised collection for distillation: per env and step, a coin with probability ``beta`` decides
whether the teacher or the student acts; the teacher's label is recorded on every step either way.

Teacher and student are each called once per step on the whole batch. The student is handed only
its own observation groups, so a student configured without ``privileged`` never receives it. A
stateless student is called only on steps where it acts somewhere; a stateful one (``stateful`` True:
history or recurrent) on every step, so its history is the one it would have at deployment. Tasks
whose spaces differ (e.g. Hopper-v5 and Walker2d-v5 in one suite) are collected one space at a time,
each batch holding the envs of the tasks that share that space.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np

from policydistill.distill.schedules import draw_actor
from policydistill.eval.rollout import EnvPool, EpisodeRecord, rollout
from policydistill.policy import Policy, Teacher
from policydistill.suite import Suite
from policydistill.types import select_groups, stack_obs

TEACHER, STUDENT = 0, 1


def task_spaces(suite: Suite) -> list[tuple[gym.spaces.Dict, gym.spaces.Box]]:
    """(observation space, action space) of every task of ``suite``, in task order."""
    out = []
    for i in range(len(suite.tasks)):
        env = suite.make_env(i)
        out.append((env.observation_space, env.action_space))
        env.close()
    return out


def space_groups(suite: Suite, tasks: list[int]) -> list[list[int]]:
    """``tasks`` grouped by their observation group shapes and action shape (first-seen order): the
    tasks whose envs can be stepped in one batch."""
    all_spaces = task_spaces(suite)
    groups: dict[tuple, list[int]] = {}
    for t in tasks:
        obs, act = all_spaces[t]
        key = (tuple((g, s.shape) for g, s in obs.spaces.items()), act.shape)
        groups.setdefault(key, []).append(t)
    return list(groups.values())


def teacher_has_std(teacher: Teacher, suite: Suite) -> bool:
    """Whether ``teacher`` (e.g. a bank) labels with a std on every task (probed on one reset state each)."""
    for i in range(len(suite.tasks)):
        env = suite.make_env(i)
        try:
            if teacher.label(stack_obs([env.reset(seed=0)[0]])).std is None:
                return False
        finally:
            env.close()
    return True


def collect(suite: Suite, tasks: list[int], teacher: Teacher, student: Policy | None, beta: float,
            episodes_per_task: int, n_envs: int, seed: int, rng: np.random.Generator,
            pool: EnvPool | None = None, teacher_noise: float = 0.0) -> list[EpisodeRecord]:
    """Episodes with per-step ``actor`` (0 teacher, 1 student), ``label_mean`` and, when the teacher has
    one, ``label_std``; ``action`` is what was executed. ``student`` None means the teacher always acts.
    ``pool`` keeps the envs open between calls. ``teacher_noise`` > 0 perturbs the teacher's executed
    actions by ``teacher_noise * std * N(0, 1)`` (its label std; clipped to the action bounds) while the
    label stays its mean, so the data shows how the teacher recovers from small deviations (as DART)."""
    if teacher_noise < 0 or not np.isfinite(teacher_noise):
        raise ValueError(f"teacher_noise must be a finite number >= 0, got {teacher_noise}")
    bounds: list[gym.spaces.Box] = []
    stateful = bool(getattr(student, "stateful", False))

    def act(obs: dict[str, np.ndarray]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        label = teacher.label(obs)
        n = len(label.mean)
        teacher_acts = np.ones(n, dtype=bool) if student is None else draw_actor(beta, n, rng)
        actions = label.mean
        if teacher_noise > 0:
            if label.std is None:
                raise ValueError("teacher_noise needs teachers with a label std (e.g. SB3/PPO experts)")
            noisy = label.mean + teacher_noise * label.std * rng.standard_normal(label.mean.shape)
            actions = np.clip(noisy, bounds[0].low, bounds[0].high).astype(np.float32)
        if stateful or not teacher_acts.all():
            own = np.asarray(student.act(select_groups(obs, student.groups), deterministic=True))
            actions = np.where(teacher_acts[:, None], actions, own).astype(np.float32)
        extras = {"actor": np.where(teacher_acts, TEACHER, STUDENT).astype(np.uint8),
                  "label_mean": label.mean.astype(np.float32)}
        if label.std is not None:
            extras["label_std"] = label.std.astype(np.float32)
        return actions, extras

    def reset(mask: np.ndarray) -> None:
        teacher.reset(mask)
        if student is not None:
            student.reset(mask)

    records = []
    all_spaces = task_spaces(suite)
    for same_space in space_groups(suite, tasks):
        bounds[:] = [all_spaces[same_space[0]][1]]
        teacher.reset(None)
        if student is not None:
            student.reset(None)
        records += rollout(suite, same_space, act, episodes_per_task, n_envs=n_envs, seed=seed, on_reset=reset,
                           record=True, pool=pool)
    return sorted(records, key=lambda r: (r.task_index, r.episode.seed))
