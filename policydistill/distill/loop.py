"""The one distillation loop: per round, the method acts and records teacher labels and updates the
student; then the loop evaluates every task, checkpoints and logs. Methods plug in as round objects:

============ ============================================ =============================================
method       round (:meth:`run_round`)                   file
============ ============================================ =============================================
bc           teacher acts, episodes aggregated, fit        :mod:`policydistill.distill.dagger`
dagger       schedule decides who acts, aggregated, fit    :mod:`policydistill.distill.dagger`
onpolicy     student acts, this round's data only, fit     :mod:`policydistill.distill.dagger`
kickstart    student samples, PPO + decaying distillation  :mod:`policydistill.distill.kickstart`
============ ============================================ =============================================

Output under ``cfg.out``: ``student/`` (bundle, rewritten every round), ``episodes/`` (shards + manifest),
``distill.json`` (per round: who acted, labels used, env steps, wall time and the part of it spent
evaluating, loss, per-task return and teacher-normalised score), ``tb/`` (TensorBoard), and
``method_state.safetensors`` for methods with state beyond the student (kickstart's value network). A
rerun resumes after the last finished round: the student and the method state come from the last
checkpoint, the optimiser restarts.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from policydistill.bundle import load_bundle, save_bundle
from policydistill.config import DistillConfig
from policydistill.distill.collect import teacher_has_std
from policydistill.distill.dagger import DaggerRounds, evaluate_per_task
from policydistill.distill.losses import make_loss
from policydistill.distill.students import make_student
from policydistill.eval.metrics import teacher_normalised
from policydistill.io import atomic_write_bytes, atomic_write_json, read_json
from policydistill.policy import Policy
from policydistill.suite import Suite
from policydistill.teachers import TeacherBank

log = logging.getLogger(__name__)

METHODS = ("bc", "dagger", "onpolicy", "kickstart")
METHOD_STATE = "method_state.safetensors"


class RoundMethod(Protocol):
    """What a method does in one round; the loop does everything else."""

    def run_round(self, r: int, prev: dict[str, Any] | None, teacher_return: float) -> dict[str, Any]:
        """Act, record and update for round ``r`` (``prev``: the last row, ``teacher_return``: the teachers'
        mean return). Returns this round's ``env_steps``, ``labels`` and ``dataset_steps``, ``beta`` (the
        probability that the teacher acted) and ``loss``, plus any numbers of its own."""
        ...

    def state_dict(self) -> dict[str, torch.Tensor]: ...

    def close(self) -> None: ...

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None: ...


def _make_method(cfg: DistillConfig, suite: Suite, bank: TeacherBank, student: Any, loss_fn: Any, out: Path,
                 first_round: int) -> RoundMethod:
    if cfg.method == "kickstart":
        from policydistill.distill.kickstart import KickstartRounds

        return KickstartRounds(cfg, suite, bank, student, loss_fn, out, first_round)
    return DaggerRounds(cfg, suite, bank, student, loss_fn, out, first_round)


def _log_row(tb: SummaryWriter, row: dict[str, Any]) -> None:
    """Scalars of a row against the labels used so far (losses and per-task scores too)."""
    step = row["labels_used"]
    for k, v in row.items():
        if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in ("round", "labels_used"):
            tb.add_scalar(f"distill/{k}", v, step)
    for k, v in row.get("losses", {}).items():
        tb.add_scalar(f"losses/{k}", v, step)
    for name, t in row["tasks"].items():
        tb.add_scalar(f"return/{name}", t["return_mean"], step)
        if t["score"] is not None:
            tb.add_scalar(f"score/{name}", t["score"], step)
    tb.flush()


def _reached(row: dict[str, Any] | None, stop_score: float | None) -> bool:
    """Whether ``row``'s mean score reaches ``stop_score`` (never when either is None)."""
    return stop_score is not None and row is not None and row["mean_score"] is not None \
        and row["mean_score"] >= stop_score


def distill(cfg: DistillConfig, suite: Suite, teachers: dict[str, Policy]) -> dict[str, Any]:
    """Run (or resume) ``cfg.rounds`` rounds of ``cfg.method``; returns the content of distill.json."""
    if cfg.method not in METHODS:
        raise ValueError(f"unknown distillation method '{cfg.method}'; expected one of {list(METHODS)}")
    if cfg.stop_score is not None and (isinstance(cfg.stop_score, bool) or not isinstance(cfg.stop_score, (int, float))
                                       or not np.isfinite(cfg.stop_score)):
        raise ValueError(f"stop_score must be a finite number or None, got {cfg.stop_score!r}")
    missing = [n for n in suite.task_names if n not in teachers]
    if missing:
        raise ValueError(f"no teacher for tasks {missing}; teachers given for {sorted(teachers)}")
    if cfg.method == "kickstart" and cfg.student.kind != "mlp":
        raise ValueError(f"kickstart trains MLP students; student.kind '{cfg.student.kind}' trains with "
                         "method=bc|dagger|onpolicy")
    if cfg.lr_decay and cfg.student.kind != "mlp":
        raise ValueError(f"lr_decay applies to MLP students; student.kind '{cfg.student.kind}' trains at a "
                         "constant lr")
    if cfg.method == "kickstart":
        from policydistill.distill.kickstart import check_params

        check_params(cfg.kickstart)
        cfg = replace(cfg, student=replace(cfg.student, learn_std=True))  # PPO samples from the student's Gaussian
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    bank = TeacherBank([teachers[n] for n in suite.task_names])
    torch.manual_seed(cfg.seed)
    student = make_student(suite, cfg.student, cfg.device, bank.teachers)
    loss_fn = make_loss(cfg.loss, teacher_has_std=teacher_has_std(bank, suite), student_has_std=cfg.student.learn_std,
                        **dict(cfg.loss_params))
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
                   "teacher_return": float(np.mean([t["return_mean"] for t in teacher_eval.values()])),
                   "rounds": []}
    first_round = len(summary["rounds"])
    torch.manual_seed(cfg.seed + 7919 * first_round)
    method = _make_method(cfg, suite, bank, student, loss_fn, out, first_round)
    if first_round and (out / METHOD_STATE).exists():
        saved_state = load_tensors((out / METHOD_STATE).read_bytes())
        method.load_state_dict({k: v.to(student.device) for k, v in saved_state.items()})
    tb = SummaryWriter(str(out / "tb"))
    g_teacher = float(np.mean([summary["teacher"][n]["return_mean"] for n in suite.task_names]))
    t_start = time.perf_counter() - (summary["rounds"][-1]["wall_time_s"] if summary["rounds"] else 0.0)
    try:
        for r in tqdm(range(first_round, cfg.rounds), desc=f"distill ({cfg.method})", unit="round", initial=first_round,
                      total=cfg.rounds, leave=False):
            prev = summary["rounds"][-1] if summary["rounds"] else None
            if _reached(prev, cfg.stop_score):
                log.info("stopping after round %d: mean score %.3f >= stop_score %s", r - 1, prev["mean_score"],
                         cfg.stop_score)
                break
            numbers = method.run_round(r, prev, g_teacher)
            t_eval = time.perf_counter()
            evals = evaluate_per_task(suite, student, cfg.eval_episodes)
            t_eval = time.perf_counter() - t_eval
            per_task = {n: {"return_mean": e["return_mean"], "return_ci95": e["return_ci95"],
                            "success_rate": e["success_rate"], **teacher_normalised(e, summary["teacher"][n])}
                        for n, e in evals.items()}
            scores = [t["score"] for t in per_task.values() if t["score"] is not None]
            labels, env_steps = numbers.pop("labels"), numbers.pop("env_steps")
            row = {"round": r, **numbers,
                   "labels_used": (prev["labels_used"] if prev else 0) + labels,
                   "env_steps": (prev["env_steps"] if prev else 0) + env_steps,
                   "wall_time_s": round(time.perf_counter() - t_start, 2),
                   "eval_time_s": round((prev.get("eval_time_s", 0.0) if prev else 0.0) + t_eval, 2),
                   "student_return": float(np.mean([e["return_mean"] for e in evals.values()])),
                   "mean_score": float(np.mean(scores)) if scores else None, "tasks": per_task}
            save_bundle(student, out / "student", meta={"distill": asdict(cfg), "round": r, "suite": suite.name})
            state = method.state_dict()
            if state:
                atomic_write_bytes(out / METHOD_STATE, save_tensors({k: v.detach().cpu().contiguous()
                                                                     for k, v in state.items()}))
            summary["rounds"].append(row)
            atomic_write_json(summary_path, summary)
            _log_row(tb, row)
            log.info("round %d: beta %.2f, labels %d, env steps %d, loss %.4f, student return %.2f, score %s", r,
                     row["beta"], row["labels_used"], row["env_steps"], row["loss"], row["student_return"],
                     "n/a" if row["mean_score"] is None else f"{row['mean_score']:.3f}")
    finally:
        method.close()
        tb.close()
    return summary
