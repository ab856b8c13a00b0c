"""Can the student's inputs predict the teacher's actions? A held-out comparison with ``privileged`` added.

Two fresh copies of the configured student architecture are trained for the same number of steps on
the same episodes (80% of them, split by episode): one reading the student's groups, one reading
them plus ``privileged``. Each is then replayed over the held-out episodes exactly as it acts
(``reset`` at every episode start, ``act`` on every step, so history students use their own
history) and scored by the mean squared error to the teacher's action label. When the student's
error is more than ``ratio`` times the privileged copy's, the teacher relies on information the
student's groups do not carry, and a warning says so: the loss will not fall however long the
student trains. The numbers go to ``distill.json`` under ``predictability``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from policydistill.distill.fit import FitJob, adam, fit
from policydistill.distill.losses import LossFn
from policydistill.models.students import build_student
from policydistill.policy import Policy
from policydistill.types import PRIVILEGED, TASK

if TYPE_CHECKING:
    from policydistill.distill.algorithm import Context

log = logging.getLogger(__name__)

RATIO = 2.0
"""Held-out MSE ratio (student / with privileged) above which the warning is logged."""
HELD_OUT = 0.2
MIN_EPISODES = 10
"""The check runs after the first round whose stored data holds at least this many episodes."""


def replay_mse(policy: Policy, data: dict[str, np.ndarray], lengths: Sequence[int]) -> float:
    """Mean squared error between ``policy.act`` and ``label_mean`` over whole episodes, each acted from
    its first step in its own env slot (reset first), as in a rollout."""
    lengths = np.asarray(lengths)
    starts = np.cumsum(lengths) - lengths
    t_max = int(lengths.max())
    policy.reset(None)
    err, count = 0.0, 0
    for t in range(t_max):
        live = lengths > t  # finished episodes keep their slot (fed their last step), outside the error
        rows = starts + np.minimum(t, lengths - 1)
        actions = policy.act({g: data[f"obs/{g}"][rows] for g in policy.groups}, deterministic=True)
        diff = actions[live] - data["label_mean"][rows[live]]
        err += float((diff.astype(np.float64) ** 2).mean(1).sum())
        count += int(live.sum())
    policy.reset(None)
    return err / count


def _split(data: dict[str, np.ndarray], lengths: np.ndarray, episodes: np.ndarray) -> tuple[dict, np.ndarray]:
    starts = np.cumsum(lengths) - lengths
    rows = np.concatenate([np.arange(starts[e], starts[e] + lengths[e]) for e in episodes])
    return {k: v[rows] for k, v in data.items()}, lengths[episodes]


def check_predictable(ctx: Context, cfg: Any, loss_fn: LossFn, raw: dict[str, np.ndarray],
                      lengths: Sequence[int]) -> dict[str, Any] | None:
    """Compare held-out action MSE of the configured student with and without ``privileged`` (see module doc).

    ``raw`` holds ``obs/<group>`` for the student's groups, ``task`` and ``privileged`` and ``label_mean``
    (+ ``label_std``) of episodes of ``lengths``; ``cfg`` the run's fit settings (updates, batch size, lr) and
    ``loss_fn`` its loss. Returns the numbers (None when the student already reads ``privileged``)."""
    groups = list(ctx.student.groups)
    lengths = np.asarray(lengths)
    if PRIVILEGED in groups or f"obs/{PRIVILEGED}" not in raw or len(lengths) < 2:
        return None
    rng = np.random.default_rng(ctx.seed + 7)
    order = rng.permutation(len(lengths))
    n_test = max(1, int(round(HELD_OUT * len(lengths))))
    train, train_len = _split(raw, lengths, np.sort(order[n_test:]))
    test, test_len = _split(raw, lengths, np.sort(order[:n_test]))
    out: dict[str, Any] = {"held_out_episodes": int(n_test), "train_episodes": int(len(lengths) - n_test),
                           "updates": cfg.round_updates(int(train_len.sum())),
                           "label_variance": float(test["label_mean"].var(0).mean())}
    teachers = [ctx.teachers[n] for n in ctx.suite.task_names]
    task = train[f"obs/{TASK}"].argmax(1)
    for name, gs in (("student", groups), ("with_privileged", [*groups, PRIVILEGED])):
        torch.manual_seed(ctx.seed)
        probe = build_student(ctx.suite, replace(ctx.student, groups=gs), ctx.device, teachers)
        data = {"x": np.concatenate([train[f"obs/{g}"] for g in gs], axis=1),
                **{k: train[k] for k in ("label_mean", "label_std") if k in train}}
        probe.fit_normalizer(data["x"])
        batches = probe.batches(data, train_len, cfg.batch_size, task if cfg.balance_tasks else None,
                                ctx.student.tbptt)
        fit(FitJob(probe, lambda model, batch: model.compute_loss(batch, loss_fn), batches,
                   cfg.fit_config(len(data["x"])),
                   adam(probe, cfg.lr)), np.random.default_rng(ctx.seed), progress=False)
        out[f"{name}_mse"] = replay_mse(probe, test, test_len)
    out["ratio"] = out["student_mse"] / max(out["with_privileged_mse"], 1e-12)
    out["warning"] = out["ratio"] > RATIO
    if out["warning"]:
        log.warning("the teacher's actions are hard to predict from the student's groups %s: held-out action MSE "
                    "%.4g vs %.4g for the same %s student reading '%s' too (%.1fx; label variance %.4g). The "
                    "teacher relies on information these inputs do not carry, so this loss will not fall by "
                    "training longer: give the student a history to infer it from (student=history_mlp|tcn|gru|"
                    "latent, or a longer student.history) or add the missing sensing to its groups.", groups,
                    out["student_mse"], out["with_privileged_mse"], ctx.student.kind, PRIVILEGED, out["ratio"],
                    out["label_variance"])
    else:
        log.info("predictability: held-out action MSE %.4g (student) vs %.4g (with '%s'), ratio %.2f",
                 out["student_mse"], out["with_privileged_mse"], PRIVILEGED, out["ratio"])
    return out


def predictability_of(summary: dict[str, Any]) -> dict[str, Any] | None:
    """The diagnostic's numbers from a distill.json content (in the row of the round it ran after)."""
    return next((row["info"]["predictability"] for row in summary["rounds"] if row["info"].get("predictability")),
                None)
