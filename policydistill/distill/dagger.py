"""Teacher-student distillation in one loop: act (the schedule decides who), record teacher labels,
update the student, evaluate, checkpoint. ``bc``, ``dagger`` and ``onpolicy`` are configurations of it:

======== ================================ ==========================================
method   who acts (beta = P(teacher acts)) data
======== ================================ ==========================================
bc       teacher (beta = 1)               aggregated over rounds (capped, FIFO)
dagger   ``schedule`` (e.g. linear 1 -> 0) aggregated over rounds (capped, FIFO)
onpolicy student (beta = 0)               this round's only (cleared after the update)
======== ================================ ==========================================

Output under ``out``: ``student/`` (bundle, rewritten every round), ``episodes/`` (shards + manifest),
``distill.json`` (per-round numbers), ``tb/`` (TensorBoard). A rerun resumes after the last finished
round (student weights from the bundle; the optimiser restarts).
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from gymnasium import spaces
from torch.utils.tensorboard import SummaryWriter

from policydistill.bundle import load_bundle, save_bundle
from policydistill.config import DistillConfig, StudentConfig
from policydistill.data.shards import EpisodeStore, ShardWriter, evict
from policydistill.distill.collectors import make_collector
from policydistill.distill.losses import make_loss
from policydistill.distill.schedules import BetaSchedule, ConstantBeta, make_schedule
from policydistill.eval.metrics import summarise, teacher_normalised
from policydistill.eval.rollout import run_episodes
from policydistill.io import atomic_write_json, read_json
from policydistill.models import resolve_device
from policydistill.models.mlp_policy import MLPPolicy
from policydistill.policy import Policy
from policydistill.suite import Suite
from policydistill.teachers import TeacherBank
from policydistill.types import PRIVILEGED, TASK, check_groups, stack_obs

log = logging.getLogger(__name__)

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


def build_student(suite: Suite, cfg: StudentConfig, device: str | torch.device) -> MLPPolicy:
    """An MLP student reading ``cfg.groups``; every task of the suite must share its spaces."""
    groups = check_groups(cfg.groups)
    envs = [suite.make_env(i) for i in range(len(suite.tasks))]
    first = envs[0]
    for i, env in enumerate(envs[1:], start=1):
        shared = [g for g in groups if g in first.observation_space.spaces]
        if any(env.observation_space[g] != first.observation_space[g] for g in shared) \
                or env.action_space != first.action_space:
            raise ValueError(f"task '{suite.tasks[i].name}' has other spaces than '{suite.tasks[0].name}': "
                             "an MLP student needs one observation and action space across the suite")
    missing = [g for g in groups if g not in first.observation_space.spaces]
    if missing:
        raise ValueError(f"student groups {missing} are not observed by suite '{suite.name}'; "
                         f"it has {list(first.observation_space.spaces)}")
    obs_space = spaces.Dict({g: first.observation_space[g] for g in groups})
    student = MLPPolicy(groups, obs_space, first.action_space, hidden=cfg.hidden, activation=cfg.activation,
                        post="clip", normalizer={"enabled": True}, log_std=cfg.learn_std)
    for env in envs:
        env.close()
    return student.to(resolve_device(device))


def _teacher_has_std(bank: TeacherBank, suite: Suite) -> bool:
    obs = stack_obs([suite.make_env(i).reset(seed=0)[0] for i in range(len(suite.tasks))])
    return bank.label(obs).std is not None


class _Trainer:
    """Gradient steps on the student over the stored data, with per-task balanced sampling."""

    def __init__(self, student: MLPPolicy, cfg: DistillConfig, loss_fn: Any, rng: np.random.Generator) -> None:
        self.student, self.cfg, self.loss_fn, self.rng = student, cfg, loss_fn, rng
        self.opt = torch.optim.Adam(student.parameters(), lr=cfg.lr)

    extra_fields: list[str] = []

    def fit(self, data: dict[str, np.ndarray], set_stats: bool, lengths: Any = None, round_index: int = 0) -> float:
        """``updates_per_round`` minibatch steps; returns the mean loss of the last 10% of them.
        (``lengths`` and ``round_index`` are for history students' trainers; steps are i.i.d. here.)"""
        dev = self.student.device
        x_np = np.concatenate([data[f"obs/{g}"] for g in self.student.groups], axis=1)
        if set_stats:
            self.student.normalizer.set_stats(x_np.mean(0), x_np.var(0))
        x = torch.as_tensor(x_np, device=dev)
        y = torch.as_tensor(data["label_mean"], device=dev)
        std = torch.as_tensor(data["label_std"], device=dev) if "label_std" in data else None
        task = data[f"obs/{TASK}"].argmax(1)
        p = None
        if self.cfg.balance_tasks:
            counts = np.bincount(task)
            p = 1.0 / counts[task]
            p /= p.sum()
        losses = []
        self.student.train()
        for _ in range(self.cfg.updates_per_round):
            idx = torch.as_tensor(self.rng.choice(len(x), size=min(self.cfg.batch_size, len(x)), p=p), device=dev)
            loss = self.loss_fn(self.student.raw(x[idx]), y[idx], student_log_std=self.student.log_std,
                                teacher_std=None if std is None else std[idx])
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
    return {n: summarise(run_episodes(suite, n, policy[n] if isinstance(policy, dict) else policy, episodes,
                                      seed=EVAL_SEED)) for n in suite.task_names}


def distill(cfg: DistillConfig, suite: Suite, teachers: dict[str, Policy]) -> dict[str, Any]:
    """Run (or resume) ``cfg.rounds`` rounds of ``cfg.method``; returns the content of distill.json."""
    schedule, aggregate = method_schedule(cfg)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    from policydistill.distill.predictability import MIN_EPISODES, check_predictable
    from policydistill.distill.students import make_student, make_trainer  # they build on this module

    ordered = [teachers[n] for n in suite.task_names]
    bank = TeacherBank(ordered)
    torch.manual_seed(cfg.seed)  # the student's initial weights follow the seed
    student = make_student(suite, cfg.student, cfg.device, ordered)
    teacher_has_std = _teacher_has_std(bank, suite)
    loss_fn = make_loss(cfg.loss, teacher_has_std=teacher_has_std,
                        student_has_std=cfg.student.learn_std, **dict(cfg.loss_params))
    rng = np.random.default_rng(cfg.seed)
    torch.manual_seed(cfg.seed)
    summary_path = out / "distill.json"
    if summary_path.exists():
        summary = read_json(summary_path)
        if summary["method"] != cfg.method or summary["suite"] != suite.name:
            raise ValueError(f"{out} holds a '{summary['method']}' run on suite '{summary['suite']}': "
                             "choose another out")
        saved = load_bundle(out / "student", device=student.device, frozen=False)
        student.load_state_dict(saved.state_dict())
        log.info("resuming after round %d", len(summary["rounds"]) - 1)
    else:
        teacher_eval = evaluate_per_task(suite, teachers, cfg.eval_episodes)
        summary = {"method": cfg.method, "suite": suite.name, "config": asdict(cfg), "teacher": teacher_eval,
                   "rounds": []}
    trainer = make_trainer(student, cfg, loss_fn, rng, ordered)
    writer = ShardWriter(out / "episodes")
    tb = SummaryWriter(str(out / "tb"))
    collector = make_collector(cfg, suite, bank, student, writer, rng)
    first_round = len(summary["rounds"])
    attempt = time.time_ns()  # episodes of an interrupted attempt at a round are never trained on
    g_teacher = float(np.mean([summary["teacher"][n]["return_mean"] for n in suite.task_names]))
    t_start = time.perf_counter() - (summary["rounds"][-1]["wall_time_s"] if summary["rounds"] else 0.0)
    for r in range(len(summary["rounds"]), cfg.rounds):
        prev = summary["rounds"][-1] if summary["rounds"] else None
        beta = schedule(r, prev["student_return"] if prev else None, g_teacher)
        collected = collector.round(r, beta, student if beta < 1 else None, seed=cfg.seed * 100_000 + r * 1000,
                                    attempt=attempt)
        steps, kept = collected.steps, collected.kept
        evict(out / "episodes", cfg.max_steps if aggregate else kept)
        store = EpisodeStore(out / "episodes")
        diagnose = cfg.student.check_predictable and "predictability" not in summary \
            and f"obs/{PRIVILEGED}" in store.fields and len(store) >= MIN_EPISODES
        groups = [*student.groups, TASK, *([PRIVILEGED] if diagnose else [])]
        fields = [f"obs/{g}" for g in dict.fromkeys(groups)] + trainer.extra_fields + ["label_mean"]
        fields += ["label_std"] if "label_std" in store.fields else []
        where = lambda m: m["round"] < first_round or m.get("attempt") == attempt  # noqa: E731
        data = store.load(list(dict.fromkeys(fields)), where=where)
        if len(data["label_mean"]) == 0:
            raise RuntimeError(f"round {r}: no episodes to train on (all dropped or filtered out)")
        lengths = store.lengths(where)
        loss = trainer.fit(data, set_stats=r == 0, lengths=lengths, round_index=r)
        if diagnose:
            summary["predictability"] = check_predictable(cfg, suite, ordered, data, lengths, teacher_has_std)
        evals = evaluate_per_task(suite, student, cfg.eval_episodes)
        per_task = {n: {"return_mean": e["return_mean"], "success_rate": e["success_rate"],
                        **teacher_normalised(e, summary["teacher"][n])} for n, e in evals.items()}
        scores = [t["score"] for t in per_task.values() if t["score"] is not None]
        row = {"round": r, "beta": beta, "labels_used": (prev["labels_used"] if prev else 0) + steps,
               "env_steps": (prev["env_steps"] if prev else 0) + steps, "dataset_steps": store.steps,
               "loss": loss, "wall_time_s": round(time.perf_counter() - t_start, 2),
               "student_return": float(np.mean([e["return_mean"] for e in evals.values()])),
               "mean_score": float(np.mean(scores)) if scores else None, "tasks": per_task, **collected.info}
        save_bundle(student, out / "student", meta={"distill": asdict(cfg), "round": r, "suite": suite.name})
        summary["rounds"].append(row)
        atomic_write_json(summary_path, summary)
        for k in ("beta", "loss", "student_return", "dataset_steps"):
            tb.add_scalar(f"distill/{k}", row[k], row["labels_used"])
        if row["mean_score"] is not None:
            tb.add_scalar("distill/mean_score", row["mean_score"], row["labels_used"])
        log.info("round %d: beta %.2f, labels %d, loss %.4f, student return %.2f, score %s", r, beta,
                 row["labels_used"], loss, row["student_return"],
                 "n/a" if row["mean_score"] is None else f"{row['mean_score']:.3f}")
    collector.close()
    tb.close()
    return summary
