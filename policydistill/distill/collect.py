"""Collection for distillation: per env and step, a coin with probability ``beta`` decides whether the teacher
or the student acts; the teacher's label is recorded on every step either way.

An algorithm asks for a round's data with a :class:`CollectPlan`; the runner hands it to its collector, in
this process (:class:`LocalCollector`) or on Ray rollout actors
(:class:`~policydistill.scale.ray_collect.RayCollector`). Both run :func:`collect` on the same seeded
episodes and store the kept ones as shards of the run's episode store.

With a gate (:mod:`policydistill.distill.gates`) the student acts and the teacher is asked only where the
gate says so, then acts for ``takeover_steps`` steps; every step stores ``query``, the reason it was labelled
(0: not asked, its ``label_mean`` zeros and never trained on). The teacher labels only the asked rows,
unless it watches every step (an intervention gate) or carries state across steps.

Teacher and student are each called once per step on the whole batch. The student is handed only its own
observation groups, so a student configured without ``privileged`` never receives it. A stateless student
is called only on steps where it acts somewhere; a stateful one (history, recurrent, action chunks) on
every step, so its history is the one it would have at deployment. Tasks whose spaces differ (e.g.
Hopper-v5 and Walker2d-v5 in one suite) are collected one space at a time, each batch holding the envs of
the tasks that share that space, and stored padded to the suite's widest spaces.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from policydistill.configs import require_number
from policydistill.data.shards import (
    NOT_ASKED,
    STUDENT,
    TAKEOVER,
    TEACHER,
    TEACHER_ROUND,
    EpisodeArrays,
    Meta,
    ShardWriter,
)
from policydistill.distill.gates import Gate, query_counts
from policydistill.distill.schedules import draw_actor
from policydistill.eval.rollout import EpisodeRecord, rollout
from policydistill.models.generalist import SpaceLayout
from policydistill.policy import Policy, Teacher
from policydistill.suites import Suite
from policydistill.suites.batched import EnvPool
from policydistill.types import select_groups, stack_obs


@dataclass(frozen=True)
class CollectPlan:
    """A round's collection: ``episodes_per_task`` episodes of every task, the teacher acting with probability
    ``beta`` per env and step and ``student`` otherwise (None: the teacher always acts). ``teacher``: who acts
    and labels (None: the run's teacher bank). ``teacher_noise``: the teacher executes its mean plus that many
    of its stds of Gaussian noise (labels stay the mean). ``episode_steps``: cut collected episodes at this
    many steps. ``success_filter``: drop teacher-only episodes that fail. After storing, the store keeps at
    most ``keep_steps`` steps (oldest shards evicted first; None: all), or only this round's with
    ``only_this_round``. ``gate``: the student acts and the teacher is asked where the gate says so (then acts
    ``takeover_steps`` steps; ``beta`` is not read) and, without a student, on every step. ``advantage``: the
    teacher's critic judges each label (``label_advantage``)."""

    beta: float
    episodes_per_task: int
    student: Policy | None = None
    teacher: Teacher | None = None
    teacher_noise: float = 0.0
    episode_steps: int | None = None
    success_filter: bool = False
    keep_steps: int | None = None
    only_this_round: bool = False
    gate: Gate | None = None
    takeover_steps: int = 1
    advantage: bool = False


@dataclass
class RoundData:
    """What a round collected: env ``steps`` (every episode), ``kept`` steps stored, ``episodes`` run,
    ``labels`` the teacher gave (None: one per step) and ``info`` for the round's summary (e.g. workers that
    failed, the gate's queries)."""

    steps: int
    kept: int
    episodes: int
    info: dict[str, Any] = field(default_factory=dict)
    labels: int | None = None


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
            pool: EnvPool | None = None, teacher_noise: float = 0.0, gate: Gate | None = None,
            takeover_steps: int = 1, has_std: bool = False, advantage: bool = False) -> list[EpisodeRecord]:
    """Episodes with per-step ``actor`` (0 teacher, 1 student), ``label_mean`` and, when the teacher has
    one, ``label_std``; ``action`` is what was executed. ``student`` None means the teacher always acts.
    ``pool`` keeps the envs open between calls. ``teacher_noise`` > 0 perturbs the teacher's executed
    actions by ``teacher_noise * std * N(0, 1)`` (its label std; clipped to the action bounds) while the
    label stays its mean, so the data shows how the teacher recovers from small deviations (as DART).
    With ``gate``, who acts and what is labelled is the gate's (see the module doc; ``beta`` is not read),
    and the steps also get ``query``; ``has_std``: the teacher labels with a std (every step then stores one,
    zeros where it was not asked). ``advantage``: each step also gets ``label_advantage``, the teacher's critic's
    Q of its label over that of its own action (see :meth:`~policydistill.models.mlp.MLPPolicy.advantage`)."""
    require_number("teacher_noise", teacher_noise, 0.0)
    if advantage and gate is not None:
        raise ValueError("a gated collection does not judge its labels by the teacher's critic")
    bounds: list = []
    stateful = bool(getattr(student, "stateful", False))
    gated = None if gate is None else GatedActor(teacher, student, gate, takeover_steps, bounds, has_std)

    def act(obs: dict[str, np.ndarray]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        if gated is not None:
            return gated(obs)
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
        if advantage:
            extras["label_advantage"] = np.asarray(teacher.advantage(obs, label.mean), dtype=np.float32)
        return actions, extras

    def reset(mask: np.ndarray) -> None:
        teacher.reset(mask)
        if student is not None:
            student.reset(mask)
        if gated is not None:
            gated.reset(mask)

    records = []
    for same_space in suite.space_groups(tasks):
        bounds[:] = [suite.spaces[same_space[0]][1]]
        teacher.reset(None)
        if student is not None:
            student.reset(None)
        records += rollout(suite, same_space, act, episodes_per_task, n_envs=n_envs, seed=seed, on_reset=reset,
                           record=True, pool=pool)
    return sorted(records, key=lambda r: (r.task_index, r.episode.seed))


class GatedActor:
    """One collection step under a gate: the student acts, the teacher where the gate asks and for the
    ``takeover_steps`` steps from there (per env); the teacher labels only those rows unless it watches every
    step or carries state. Without a student the teacher acts and labels everywhere. ``bounds[0]``: the action
    space of the envs being stepped; ``has_std``: the teacher's labels have a std."""

    def __init__(self, teacher: Teacher, student: Policy | None, gate: Gate, takeover_steps: int,
                 bounds: list, has_std: bool) -> None:
        self.teacher, self.student, self.gate, self.takeover_steps, self.bounds = (
            teacher, student, gate, takeover_steps, bounds)
        self.has_std = has_std
        members = getattr(teacher, "teachers", [teacher])
        self.watch_all = gate.watches or any(getattr(t, "stateful", False) for t in members)
        self.left: np.ndarray | None = None  # (n_envs,) takeover steps left after this one

    def reset(self, mask: np.ndarray) -> None:
        if self.left is not None:
            self.left[np.asarray(mask, dtype=bool)] = 0

    def __call__(self, obs: dict[str, np.ndarray]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        student, box = self.student, self.bounds[0]
        n = len(next(iter(obs.values())))
        if self.left is None or len(self.left) != n:
            self.left = np.zeros(n, dtype=np.int64)
        watched = self.teacher.label(obs) if self.watch_all else None
        if student is None:
            own, reasons = None, np.full(n, TEACHER_ROUND, dtype=np.uint8)
        else:
            own = np.asarray(student.act(select_groups(obs, student.groups), deterministic=True), dtype=np.float32)
            fresh = self.gate.decide(obs, own, None if watched is None else watched.mean, box)
            reasons = np.where(self.left > 0, TAKEOVER, fresh).astype(np.uint8)
        asked = reasons != NOT_ASKED
        self.left = np.where(self.left > 0, self.left - 1, np.where(asked, self.takeover_steps - 1, 0))
        mean, std = np.zeros((n, *box.shape), dtype=np.float32), np.zeros((n, *box.shape), dtype=np.float32)
        rows = np.flatnonzero(asked)
        label = watched if watched is not None or not len(rows) else self.teacher.label(
            {g: np.asarray(v)[rows] for g, v in obs.items()})
        if label is not None:
            pick = rows if watched is not None else slice(None)
            mean[rows] = label.mean[pick]
            if self.has_std:
                std[rows] = label.std[pick]
        actions = mean if own is None else np.where(asked[:, None], mean, own).astype(np.float32)
        extras = {"actor": np.where(asked, TEACHER, STUDENT).astype(np.uint8), "label_mean": mean, "query": reasons}
        if self.has_std:
            extras["label_std"] = std
        return actions, extras


def suite_layout(suite: Suite) -> SpaceLayout:
    """The per-task dims of ``suite`` (what padding to the widest spaces needs)."""
    return SpaceLayout.from_spaces(*zip(*suite.spaces, strict=True))


def episodes_to_store(records: Sequence[EpisodeRecord], round_index: int, beta: float, success_filter: bool,
                      layout: SpaceLayout) -> list[tuple[EpisodeArrays, Meta]]:
    """The episodes a round keeps (not dropped; with ``success_filter``, teacher-only episodes only if
    successful) with their metadata, not yet validated (whoever stores them validates them). When the tasks
    differ in their spaces, the arrays are padded to the widest (see :class:`SpaceLayout`) and the metadata
    gets the task's real ``dims``."""
    out = []
    for rec in records:
        teacher_only = not rec.steps["actor"].any()
        if rec.episode.error or (success_filter and teacher_only and not rec.episode.success):
            continue
        meta = {"task": rec.episode.task, "task_index": rec.task_index, "seed": rec.episode.seed,
                "success": rec.episode.success, "round": round_index, "beta": beta, "return": rec.episode.ret}
        steps = rec.steps
        if not layout.uniform:
            steps = layout.pad_steps(steps)
            meta["dims"] = {**layout.group_dims[rec.task_index], "action": layout.act_dims[rec.task_index]}
        out.append((steps, meta))
    return out


class Collector(Protocol):
    def round(self, plan: CollectPlan, teacher: Teacher, round_index: int, seed: int,
              rng: np.random.Generator) -> RoundData:
        """Collect the plan's episodes (episode ``k`` of a task seeded ``seed + k``) with ``teacher`` acting and
        labelling, and store the kept ones."""
        ...

    def close(self) -> None: ...


class LocalCollector:
    """Collect in this process, drawing the actors' coins and the teacher noise from the round's ``rng``, and
    append to the store at ``root``. Envs stay open across rounds; ``pool``: envs of ``suite`` to borrow for
    uncut episodes (a runner's evaluation envs), else the collector builds its own."""

    def __init__(self, suite: Suite, n_envs: int, root: Path, pool: EnvPool | None = None) -> None:
        self.suite, self.n_envs, self.writer = suite, n_envs, ShardWriter(root)
        self.layout = suite_layout(suite)
        self.views: dict[int | None, tuple[Suite, EnvPool]] = {} if pool is None else {None: (suite, pool)}
        self.has_std: dict[int, bool] = {}  # per teacher (id): whether it labels with a std

    def view(self, episode_steps: int | None) -> tuple[Suite, EnvPool]:
        """The suite with its episodes cut at ``episode_steps`` (None: as they are), and its env pool."""
        if episode_steps not in self.views:
            suite = self.suite if episode_steps is None else self.suite.with_episode_limit(episode_steps)
            self.views[episode_steps] = (suite, EnvPool(suite))
        return self.views[episode_steps]

    def round(self, plan: CollectPlan, teacher: Teacher, round_index: int, seed: int,
              rng: np.random.Generator) -> RoundData:
        suite, pool = self.view(plan.episode_steps)
        if plan.gate is not None and id(teacher) not in self.has_std:
            self.has_std[id(teacher)] = teacher_has_std(teacher, suite)
        records = collect(suite, list(range(len(suite.tasks))), teacher, plan.student, plan.beta,
                          plan.episodes_per_task, self.n_envs, seed=seed, rng=rng, pool=pool,
                          teacher_noise=plan.teacher_noise, gate=plan.gate, takeover_steps=plan.takeover_steps,
                          has_std=self.has_std.get(id(teacher), False), advantage=plan.advantage)
        kept = 0
        for arrays, meta in episodes_to_store(records, round_index, plan.beta, plan.success_filter, self.layout):
            self.writer.add(arrays, meta)
            kept += len(arrays["reward"])
        self.writer.flush()
        steps = sum(r.episode.length for r in records)
        if plan.gate is None:
            return RoundData(steps, kept, len(records))
        queries = query_counts(np.concatenate([r.steps["query"] for r in records]))
        labels = sum(queries.values())
        info = {"queries": queries, "query_rate": round(labels / max(1, steps), 4),
                "watched_steps": steps if plan.gate.watches and plan.student is not None else 0}
        return RoundData(steps, kept, len(records), info, labels)

    def close(self) -> None:
        for _, pool in self.views.values():
            pool.close()
