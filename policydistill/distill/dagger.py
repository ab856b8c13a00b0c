"""DAgger and its special cases as rounds of the distillation loop (:mod:`policydistill.distill.loop`):
act (the schedule decides who), record teacher labels, store, update the student on the stored data.

======== ================================= ==========================================
method   who acts (beta = P(teacher acts)) data
======== ================================= ==========================================
bc       teacher (beta = 1)                aggregated over rounds (capped, FIFO)
dagger   ``schedule`` (e.g. linear 1 -> 0) aggregated over rounds (capped, FIFO)
onpolicy student (beta = 0)                this round's only (cleared after the update)
======== ================================= ==========================================

BC is the baseline: the student is trained on the stored expert episodes only. The aggregated data is
capped at ``max_steps`` steps; eviction removes whole shards, oldest first (so the oldest rounds go
first). ``success_filter`` drops teacher-only episodes that fail the task's success test.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from gymnasium import spaces

from policydistill.config import DistillConfig, StudentConfig
from policydistill.data.sampling import RowSampler, task_weights
from policydistill.data.shards import EpisodeStore, ShardWriter, evict
from policydistill.distill.collect import task_spaces
from policydistill.distill.collectors import make_collector
from policydistill.distill.predictability import MIN_EPISODES, check_predictable
from policydistill.distill.schedules import BetaSchedule, ConstantBeta, make_schedule
from policydistill.eval.metrics import summarise
from policydistill.eval.rollout import run_episodes
from policydistill.models import resolve_device
from policydistill.models.generalist import (
    TASK_ENCODINGS,
    GeneralistPolicy,
    action_mask,
    fit_normalizer,
)
from policydistill.models.mlp_policy import MLPPolicy
from policydistill.policy import Policy
from policydistill.suite import Suite
from policydistill.teachers import TeacherBank
from policydistill.types import PRIVILEGED, TASK, check_groups

METHODS = ("bc", "dagger", "onpolicy")
EVAL_SEED = 5000


def method_schedule(cfg: DistillConfig) -> tuple[BetaSchedule, bool]:
    """The beta schedule and whether data is aggregated across rounds, for ``cfg.method``."""
    if cfg.method not in METHODS:
        raise ValueError(f"unknown distillation method '{cfg.method}'; expected one of {list(METHODS)}")
    if cfg.method == "bc":
        return ConstantBeta(1.0), True
    if cfg.method == "onpolicy":
        return ConstantBeta(0.0), False
    return make_schedule(cfg.schedule, **dict(cfg.schedule_params)), True


def build_student(suite: Suite, cfg: StudentConfig, device: str | torch.device) -> MLPPolicy | GeneralistPolicy:
    """The student reading ``cfg.groups``: an :class:`MLPPolicy` when every task shares its spaces and the task
    is one-hot encoded, else a :class:`GeneralistPolicy` (padding plus masks, one-hot or learned task embedding)."""
    groups = check_groups(cfg.groups)
    all_spaces = task_spaces(suite)
    first_obs, first_act = all_spaces[0]
    missing = sorted({g for obs, _ in all_spaces for g in groups if g not in obs.spaces})
    if missing:
        raise ValueError(f"student groups {missing} are not observed by every task of suite '{suite.name}'; "
                         f"it has {list(first_obs.spaces)}")
    obs_spaces = [spaces.Dict({g: obs[g] for g in groups}) for obs, _ in all_spaces]
    uniform = all(o == obs_spaces[0] and a == first_act for o, (_, a) in zip(obs_spaces, all_spaces, strict=True))
    if cfg.task_encoding not in TASK_ENCODINGS:
        raise ValueError(f"student.task_encoding '{cfg.task_encoding}' is not one of {list(TASK_ENCODINGS)}")
    if uniform and cfg.task_encoding == "onehot":
        student = MLPPolicy(groups, obs_spaces[0], first_act, hidden=cfg.hidden, activation=cfg.activation,
                            post="clip", normalizer={"enabled": True}, log_std=cfg.learn_std)
    else:
        if TASK not in groups:
            why = "its tasks have different spaces" if not uniform else "a task embedding is asked for"
            raise ValueError(f"suite '{suite.name}': {why}, so the student must read the '{TASK}' group; "
                             f"got student.groups={list(groups)}")
        student = GeneralistPolicy(groups, obs_spaces, [a for _, a in all_spaces], hidden=cfg.hidden,
                                   activation=cfg.activation, task_encoding=cfg.task_encoding,
                                   embedding_dim=cfg.embedding_dim, log_std=cfg.learn_std)
    return student.to(resolve_device(device))


class _Trainer:
    """Gradient steps on the student over the stored data, with per-task balanced sampling."""

    def __init__(self, student: MLPPolicy | GeneralistPolicy, cfg: DistillConfig, loss_fn: Any,
                 rng: np.random.Generator) -> None:
        self.student, self.cfg, self.loss_fn, self.rng = student, cfg, loss_fn, rng
        self.opt = torch.optim.Adam(student.parameters(), lr=cfg.lr)

    extra_fields: list[str] = []

    def fit(self, data: dict[str, np.ndarray], set_stats: bool, lengths: Any = None, round_index: int = 0) -> float:
        """``updates_per_round`` minibatch steps; returns the mean loss of the last 10% of them.
        (``lengths`` and ``round_index`` are for history students' trainers; steps are i.i.d. here.)"""
        dev = self.student.device
        x_np = np.concatenate([data[f"obs/{g}"] for g in self.student.groups], axis=1)
        if set_stats:
            fit_normalizer(self.student, x_np)
        x = torch.as_tensor(x_np, device=dev)
        y = torch.as_tensor(data["label_mean"], device=dev)
        std = torch.as_tensor(data["label_std"], device=dev) if "label_std" in data else None
        task = data[f"obs/{TASK}"].argmax(1)
        mask = action_mask(self.student, task)
        draw = RowSampler(len(x), task_weights(task) if self.cfg.balance_tasks else None)
        losses = []
        self.student.train()
        for k in range(self.cfg.updates_per_round):
            if self.cfg.lr_decay:  # cosine from lr to lr / 100 over the round's updates
                frac = k / max(1, self.cfg.updates_per_round - 1)
                for group in self.opt.param_groups:
                    group["lr"] = self.cfg.lr * (0.01 + 0.99 * 0.5 * (1 + np.cos(np.pi * frac)))
            idx = torch.as_tensor(draw(self.rng, min(self.cfg.batch_size, len(x))), device=dev)
            loss = self.loss_fn(self.student.raw(x[idx]), y[idx], student_log_std=self.student.log_std,
                                teacher_std=None if std is None else std[idx], mask=None if mask is None else mask[idx])
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
            losses.append(loss.item())
        self.student.eval()
        tail = losses[-max(1, len(losses) // 10):]
        if not np.isfinite(tail).all():
            raise FloatingPointError(f"distillation loss became non-finite ({tail[-1]}); lower lr (now {self.cfg.lr})")
        return float(np.mean(tail))


def evaluate_per_task(suite: Suite, policy: Policy | dict[str, Policy], episodes: int) -> dict[str, dict]:
    """Seeded evaluation of every task, each in its own observation and action space."""
    return {n: summarise(run_episodes(suite, n, policy[n] if isinstance(policy, dict) else policy, episodes,
                                      seed=EVAL_SEED)) for n in suite.task_names}


def short_episodes(suite: Suite, steps: int) -> Suite:
    """``suite`` with every task's episodes cut at ``steps`` (or its own limit when shorter)."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"collect_steps must be an int >= 1, got {steps!r}")
    tasks = []
    for t in suite.tasks:
        env = suite.make_env(t.name)
        own = t.max_episode_steps or (env.spec.max_episode_steps if env.spec else None)
        env.close()
        tasks.append(replace(t, max_episode_steps=min(steps, own) if own else steps))
    return replace(suite, tasks=tuple(tasks))


class DaggerRounds:
    """One round of ``bc``/``dagger``/``onpolicy`` for the loop in :mod:`policydistill.distill.loop`: collect
    with the schedule's beta (here or on Ray rollout actors, ``collector``), store the episodes (padded to
    the suite's widest spaces when they differ),
    evict down to the cap, refit the student's input normaliser to the stored data and train on it (a
    normaliser fitted once on a small first round clips the states the student reaches later)."""

    def __init__(self, cfg: DistillConfig, suite: Suite, bank: TeacherBank, student: MLPPolicy | GeneralistPolicy,
                 loss_fn: Any, out: Path, first_round: int) -> None:
        self.schedule, self.aggregate = method_schedule(cfg)
        self.cfg, self.bank, self.student = cfg, bank, student
        self.suite = suite if cfg.collect_steps is None else short_episodes(suite, cfg.collect_steps)
        self.rng = np.random.default_rng(cfg.seed + 7919 * first_round)
        from policydistill.distill.students import make_trainer  # it builds on this module

        self.trainer = make_trainer(student, cfg, loss_fn, self.rng, bank.teachers)
        self.loss_fn, self.diagnosed = loss_fn, False
        self.root = out / "episodes"
        self.collector = make_collector(cfg, self.suite, bank, student, ShardWriter(self.root), self.rng)
        self.first_round = first_round
        self.attempt = time.time_ns()  # episodes of an interrupted attempt at a round are never trained on

    def run_round(self, r: int, prev: dict[str, Any] | None, teacher_return: float) -> dict[str, Any]:
        """Collect, store, evict and train for round ``r``; the row's method numbers."""
        cfg = self.cfg
        beta = self.schedule(r, prev["student_return"] if prev else None, teacher_return)
        t0 = time.perf_counter()
        collected = self.collector.round(r, beta, self.student if beta < 1 else None,
                                         seed=cfg.seed * 100_000 + r * 1000, attempt=self.attempt)
        steps, kept = collected.steps, collected.kept
        t_collect = time.perf_counter() - t0
        evict(self.root, cfg.max_steps if self.aggregate else kept)
        store = EpisodeStore(self.root)
        diagnose = cfg.student.check_predictable and not self.diagnosed and f"obs/{PRIVILEGED}" in store.fields \
            and len(store) >= MIN_EPISODES and not isinstance(self.student, GeneralistPolicy)  # padded data
        groups = [*self.student.groups, TASK, *([PRIVILEGED] if diagnose else [])]
        fields = [f"obs/{g}" for g in dict.fromkeys(groups)] + self.trainer.extra_fields + ["label_mean"]
        fields += ["label_std"] if "label_std" in store.fields else []
        where = lambda m: m["round"] < self.first_round or m.get("attempt") == self.attempt  # noqa: E731
        data = store.load(list(dict.fromkeys(fields)), where=where)
        if len(data["label_mean"]) == 0:
            raise RuntimeError(f"round {r}: no episodes to train on (all dropped or filtered out)")
        lengths = store.lengths(where)  # history students train on whole episodes
        loss = self.trainer.fit(data, set_stats=True, lengths=lengths, round_index=r)  # this round's statistics
        extra = {}
        if diagnose:
            self.diagnosed = True
            extra["predictability"] = check_predictable(cfg, self.suite, self.bank.teachers, data, lengths,
                                                        self.loss_fn)
        return {"beta": beta, "env_steps": steps, "labels": steps, "dataset_steps": store.steps, "loss": loss,
                "collect_time_s": round(t_collect, 2), "update_time_s": round(time.perf_counter() - t0 - t_collect, 2),
                **collected.info, **extra}

    def close(self) -> None:
        self.collector.close()

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Nothing beyond the student bundle is needed to resume (the optimiser restarts)."""
        return {}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """See :meth:`state_dict`."""


def distill(cfg: DistillConfig, suite: Suite, teachers: dict[str, Policy]) -> dict[str, Any]:
    """Run (or resume) ``cfg.rounds`` rounds of ``cfg.method``: :func:`policydistill.distill.loop.distill`."""
    from policydistill.distill.loop import distill as run

    return run(cfg, suite, teachers)
