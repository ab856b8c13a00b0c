"""Kickstarting: PPO on the student's own rollouts plus a distillation loss to the teachers.

Each round the student acts alone (sampled actions) in envs spread over the suite's tasks, the
:class:`TeacherBank` labels every visited state, and the student and its value network minimise::

    ppo_loss + kd_weight(round) * distill_loss(student mean / log std, teacher label)

``kd_weight`` starts at ``kd_weight_start`` and decays per round: ``exponential``
(``start * rate ** round``), ``linear`` (to 0 at round ``kd_decay_rounds``) or ``return_ratio``
(``start * clip(1 - G_student / G_teacher, 0, 1)`` from the last evaluation). Once it reaches 0 the
student is trained on the env reward only, so it may exceed its teachers. ``distill_loss`` is any
loss of the menu in :mod:`policydistill.distill.losses`.

Output under ``out``: ``student/`` (bundle, rewritten every round) and ``kickstart.json`` (per-round
numbers). The value network is a training aid and is not saved.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from torch import nn

from policydistill.bundle import save_bundle
from policydistill.config import StudentConfig
from policydistill.distill.dagger import build_student, evaluate_per_task
from policydistill.distill.losses import LOSSES, LossFn, make_loss
from policydistill.distill.schedules import AdaptiveBeta, BetaSchedule, ExponentialBeta, LinearBeta
from policydistill.eval.metrics import teacher_normalised
from policydistill.eval.rollout import EpisodeRecord, rollout
from policydistill.io import atomic_write_json
from policydistill.models.mlp_policy import MLPPolicy
from policydistill.models.normalizer import ObsNormalizer
from policydistill.policy import Policy
from policydistill.suite import Suite
from policydistill.teachers import TeacherBank
from policydistill.types import select_groups, stack_obs

log = logging.getLogger(__name__)

KD_DECAYS = ("exponential", "linear", "return_ratio")


def _count(name: str, value: Any, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"KickstartParams.{name} must be an int >= {minimum}, got {value!r}")


def _number(name: str, value: Any, low: float, high: float, low_open: bool = False) -> None:
    ok = not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
    ok = ok and (value > low if low_open else value >= low) and value <= high
    if not ok:
        bracket = "(" if low_open else "["
        raise ValueError(f"KickstartParams.{name} must be a number in {bracket}{low}, {high}], got {value!r}")


@dataclass(frozen=True)
class KickstartParams:
    """Kickstarting settings. A round runs ``episodes_per_task`` student episodes of every task on
    ``n_envs`` envs, then ``epochs`` passes of PPO + distillation over them in minibatches of
    ``minibatch_size`` states. ``kd_weight_start=0`` is plain PPO (no teacher labels are fetched)."""

    rounds: int = 10
    episodes_per_task: int = 4
    n_envs: int = 8
    gamma: float = 0.99
    gae_lambda: float = 0.95
    clip_range: float = 0.2
    epochs: int = 10
    minibatch_size: int = 64
    lr: float = 3e-4
    ent_coef: float = 0.0
    vf_coef: float = 0.5
    max_grad_norm: float = 0.5
    normalize_advantage: bool = True
    value_hidden: tuple[int, ...] = (64, 64)
    kd_weight_start: float = 1.0
    kd_decay: str = "exponential"
    kd_decay_rate: float = 0.7
    kd_decay_rounds: int = 10
    kd_loss: str = "forward_kl"
    kd_loss_params: Mapping[str, float] = field(default_factory=dict)
    eval_episodes: int = 5
    seed: int = 0
    device: str = "auto"

    def __post_init__(self) -> None:
        for name in ("rounds", "episodes_per_task", "n_envs", "epochs", "minibatch_size", "eval_episodes",
                     "kd_decay_rounds"):
            _count(name, getattr(self, name))
        _count("seed", self.seed, 0)
        _number("gamma", self.gamma, 0.0, 1.0)
        _number("gae_lambda", self.gae_lambda, 0.0, 1.0)
        _number("clip_range", self.clip_range, 0.0, 1.0, low_open=True)
        _number("lr", self.lr, 0.0, 1.0, low_open=True)
        _number("ent_coef", self.ent_coef, 0.0, math.inf)
        _number("vf_coef", self.vf_coef, 0.0, math.inf, low_open=True)
        _number("max_grad_norm", self.max_grad_norm, 0.0, math.inf, low_open=True)
        _number("kd_weight_start", self.kd_weight_start, 0.0, math.inf)
        _number("kd_decay_rate", self.kd_decay_rate, 0.0, 1.0)
        if self.kd_decay not in KD_DECAYS:
            raise ValueError(f"unknown kd_decay '{self.kd_decay}'; expected one of {list(KD_DECAYS)}")
        if self.kd_loss not in LOSSES:
            raise ValueError(f"unknown kd_loss '{self.kd_loss}'; losses: {sorted(LOSSES)}")
        if not self.value_hidden or any(isinstance(h, bool) or not isinstance(h, int) or h < 1
                                        for h in self.value_hidden):
            raise ValueError(f"KickstartParams.value_hidden must be a non-empty list of ints >= 1, "
                             f"got {self.value_hidden!r}")
        object.__setattr__(self, "value_hidden", tuple(self.value_hidden))
        object.__setattr__(self, "kd_loss_params", dict(self.kd_loss_params))

    def kd_schedule(self) -> BetaSchedule:
        """The decay factor in [0, 1] per round (``kd_weight = kd_weight_start * factor``)."""
        if self.kd_decay == "exponential":
            return ExponentialBeta(decay=self.kd_decay_rate)
        if self.kd_decay == "linear":
            return LinearBeta(rounds=self.kd_decay_rounds)
        return AdaptiveBeta()


def kd_weight(params: KickstartParams, round: int, student_return: float | None = None,
              teacher_return: float | None = None) -> float:
    """The distillation weight of ``round``; ``return_ratio`` reads the last evaluated returns (the
    start weight while there is no student return yet or the teacher return is not positive)."""
    return float(params.kd_weight_start * params.kd_schedule()(round, student_return, teacher_return))


class ValueNet(nn.Module):
    """State value: normaliser -> tanh MLP -> ``ret_mean + ret_std * out``, x (n, obs_dim) -> v (n,).

    The MLP predicts returns standardised by ``ret_mean``/``ret_std``; :meth:`update_return_stats` moves
    them and rescales the last layer so that the predictions are unchanged (as PopArt does), which keeps
    the regression well scaled however large the returns grow.
    """

    def __init__(self, obs_dim: int, hidden: Sequence[int] = (64, 64)) -> None:
        super().__init__()
        self.normalizer = ObsNormalizer(obs_dim, enabled=True)
        layers: list[nn.Module] = []
        last = obs_dim
        for h in hidden:
            layers += [nn.Linear(last, h), nn.Tanh()]
            last = h
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(last, 1)
        self.register_buffer("ret_mean", torch.zeros(()))
        self.register_buffer("ret_std", torch.ones(()))

    def normalised(self, x: torch.Tensor) -> torch.Tensor:
        """Standardised value prediction: x (n, obs_dim) -> (n,)."""
        return self.head(self.body(self.normalizer(x))).squeeze(-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ret_mean + self.ret_std * self.normalised(x)

    @torch.no_grad()
    def update_return_stats(self, returns: torch.Tensor, momentum: float = 0.5) -> None:
        """Blend the mean/std of ``returns`` (N,) into the stats, preserving every prediction."""
        mean = (1 - momentum) * self.ret_mean + momentum * returns.mean()
        std = ((1 - momentum) * self.ret_std + momentum * returns.std(unbiased=False)).clamp_min(1e-3)
        self.head.weight.mul_(self.ret_std / std)
        self.head.bias.copy_((self.ret_std * self.head.bias + self.ret_mean - mean) / std)
        self.ret_mean.copy_(mean)
        self.ret_std.copy_(std)


def gae(rewards: np.ndarray, values: np.ndarray, next_values: np.ndarray, terminated: np.ndarray,
        episode_end: np.ndarray, gamma: float, lam: float) -> tuple[np.ndarray, np.ndarray]:
    """Generalised advantage estimates over concatenated episodes, all inputs (T,).

    ``next_values[t]`` is V of the state after step t (for an episode's last step, of the state it
    ended on). A ``terminated`` step does not bootstrap; a truncated one (``episode_end`` without
    ``terminated``) does. Advantages never flow across ``episode_end``. Returns (advantages, returns),
    each float32 (T,), with returns = advantages + values.
    """
    rewards, values, next_values = (np.asarray(a, dtype=np.float64) for a in (rewards, values, next_values))
    terminated, episode_end = np.asarray(terminated, dtype=bool), np.asarray(episode_end, dtype=bool)
    if np.any(terminated & ~episode_end):
        raise ValueError("a terminated step must end its episode")
    delta = rewards + gamma * next_values * ~terminated - values
    adv = np.zeros_like(delta)
    running = 0.0
    for t in range(len(delta) - 1, -1, -1):
        running = delta[t] + (0.0 if episode_end[t] else gamma * lam * running)
        adv[t] = running
    return adv.astype(np.float32), (adv + values).astype(np.float32)


class _KeepFinalObs(gym.Wrapper):
    """Stores the observation an episode ended on in ``finals[(task, reset seed)]`` for bootstrapping."""

    def __init__(self, env: gym.Env, task: int, finals: dict[tuple[int, int], dict[str, np.ndarray]]) -> None:
        super().__init__(env)
        self.task, self.finals, self.episode_seed = task, finals, -1

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> Any:
        self.episode_seed = -1 if seed is None else int(seed)
        return self.env.reset(seed=seed, options=options)

    def step(self, action: Any) -> Any:
        obs, reward, terminated, truncated, info = self.env.step(action)
        if terminated or truncated:
            self.finals[(self.task, self.episode_seed)] = obs
        return obs, reward, terminated, truncated, info


@dataclass(frozen=True)
class _FinalObsSuite(Suite):
    """The same suite, its envs keeping the observation each episode ended on."""

    finals: dict[tuple[int, int], dict[str, np.ndarray]] = field(default_factory=dict, compare=False)

    def make_env(self, task: int | str, render_mode: str | None = None) -> gym.Env:
        i = self.index(task) if isinstance(task, str) else task
        return _KeepFinalObs(super().make_env(i, render_mode), i, self.finals)


@dataclass
class Batch:
    """One round of student experience, N states: ``x`` (N, obs_dim) student inputs, ``sample`` (N, act_dim)
    the Gaussian samples before clipping, ``old_logp``/``advantage``/``ret`` (N,), teacher ``label_mean``
    (N, act_dim) and ``label_std`` (N, act_dim) or None (both None when no labels were fetched)."""

    x: torch.Tensor
    sample: torch.Tensor
    old_logp: torch.Tensor
    advantage: torch.Tensor
    ret: torch.Tensor
    label_mean: torch.Tensor | None = None
    label_std: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, idx: torch.Tensor) -> Batch:
        def take(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t[idx]

        return Batch(self.x[idx], self.sample[idx], self.old_logp[idx], self.advantage[idx], self.ret[idx],
                     take(self.label_mean), take(self.label_std))


def _log_prob(student: MLPPolicy, mean: torch.Tensor, sample: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-density of ``sample`` (n, d) under N(mean, std) and its entropy, each (n,)."""
    assert student.log_std is not None
    dist = torch.distributions.Normal(mean, torch.exp(student.log_std).expand_as(mean))
    return dist.log_prob(sample).sum(-1), dist.entropy().sum(-1)


def kickstart_loss(student: MLPPolicy, value: ValueNet, batch: Batch, weight: float, kd_fn: LossFn,
                   params: KickstartParams) -> tuple[torch.Tensor, dict[str, float]]:
    """``ppo_loss + weight * kd_fn(student mean, teacher mean, log stds)`` on one minibatch, where
    ``ppo_loss = clipped surrogate - ent_coef * entropy + vf_coef * value MSE``; the scalar loss and its parts."""
    mean = student.raw(batch.x)
    logp, entropy = _log_prob(student, mean, batch.sample)
    ratio = torch.exp(logp - batch.old_logp)
    adv = batch.advantage
    surrogate = torch.min(ratio * adv, torch.clamp(ratio, 1 - params.clip_range, 1 + params.clip_range) * adv)
    policy_loss = -surrogate.mean()
    value_loss = (value.normalised(batch.x) - (batch.ret - value.ret_mean) / value.ret_std).pow(2).mean()
    loss = policy_loss - params.ent_coef * entropy.mean() + params.vf_coef * value_loss
    kd = torch.zeros(())
    if weight > 0:
        if batch.label_mean is None:
            raise ValueError("a positive kd weight needs teacher labels in the batch")
        kd = kd_fn(mean, batch.label_mean, student_log_std=student.log_std, teacher_std=batch.label_std)
        loss = loss + weight * kd
    with torch.no_grad():
        stats = {"policy": policy_loss.item(), "value": value_loss.item(), "kd": kd.item(),
                 "entropy": entropy.mean().item(), "approx_kl": ((ratio - 1) - torch.log(ratio)).mean().item(),
                 "clip_fraction": ((ratio - 1).abs() > params.clip_range).float().mean().item()}
    return loss, stats


def _collect(suite: _FinalObsSuite, student: MLPPolicy, bank: TeacherBank | None, params: KickstartParams,
             seed: int) -> list[EpisodeRecord]:
    """Student-only episodes recording ``sample`` and, with a bank, ``label_mean`` [``label_std``] per step."""

    def act(obs: dict[str, np.ndarray]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        with torch.no_grad():
            mean = student.raw(student.obs_tensor(select_groups(obs, student.groups)))
            sample = mean + student.std(len(mean)) * torch.randn_like(mean)
            action = student.postprocess(sample).cpu().numpy().astype(np.float32)
        extras = {"sample": sample.cpu().numpy().astype(np.float32)}
        if bank is not None:
            label = bank.label(obs)
            extras["label_mean"] = label.mean.astype(np.float32)
            if label.std is not None:
                extras["label_std"] = label.std.astype(np.float32)
        return action, extras

    def on_reset(mask: np.ndarray) -> None:
        if bank is not None:
            bank.reset(mask)

    if bank is not None:
        bank.reset(None)
    suite.finals.clear()
    tasks = list(range(len(suite.tasks)))
    return rollout(suite, tasks, act, params.episodes_per_task, n_envs=params.n_envs, seed=seed,
                   on_reset=on_reset, record=True)


def _batch(records: list[EpisodeRecord], suite: _FinalObsSuite, student: MLPPolicy, value: ValueNet,
           params: KickstartParams, set_stats: bool) -> Batch:
    """Advantages, returns and old log-probs of the kept episodes (set normaliser stats on the first round)."""
    dev = student.device
    x_np = np.concatenate([np.concatenate([r.steps[f"obs/{g}"] for g in student.groups], axis=1) for r in records])
    if set_stats:
        student.normalizer.set_stats(x_np.mean(0), x_np.var(0))
        value.normalizer.set_stats(x_np.mean(0), x_np.var(0))
    finals = stack_obs([suite.finals[(r.task_index, r.episode.seed)] for r in records])
    with torch.no_grad():
        x = torch.as_tensor(x_np, device=dev)
        v = value(x).cpu().numpy()
        v_final = value(student.obs_tensor(select_groups(finals, student.groups))).cpu().numpy()
        sample = torch.as_tensor(np.concatenate([r.steps["sample"] for r in records]), device=dev)
        old_logp, _ = _log_prob(student, student.raw(x), sample)
    lengths = np.array([r.episode.length for r in records])
    ends = np.cumsum(lengths) - 1
    episode_end = np.zeros(len(x_np), dtype=bool)
    episode_end[ends] = True
    next_v = np.append(v[1:], 0.0)
    next_v[ends] = v_final
    terminated = np.concatenate([r.steps["terminated"] for r in records])
    adv, ret = gae(np.concatenate([r.steps["reward"] for r in records]), v, next_v, terminated, episode_end,
                   params.gamma, params.gae_lambda)
    if params.normalize_advantage and len(adv) > 1:
        adv = (adv - adv.mean()) / (adv.std() + 1e-8)

    def cat(key: str) -> torch.Tensor | None:
        if key not in records[0].steps:
            return None
        return torch.as_tensor(np.concatenate([r.steps[key] for r in records]), device=dev)

    ret_t = torch.as_tensor(ret, device=dev)
    value.update_return_stats(ret_t, momentum=1.0 if set_stats else 0.5)
    return Batch(x, sample, old_logp, torch.as_tensor(adv, device=dev), ret_t, cat("label_mean"), cat("label_std"))


def _update(student: MLPPolicy, value: ValueNet, opt: torch.optim.Optimizer, batch: Batch, weight: float,
            kd_fn: LossFn, params: KickstartParams, gen: torch.Generator) -> dict[str, float]:
    """``epochs`` passes over ``batch`` in shuffled minibatches; the mean of each loss part."""
    parts: list[dict[str, float]] = []
    student.train()
    for _ in range(params.epochs):
        order = torch.randperm(len(batch), generator=gen).to(batch.x.device)
        for start in range(0, len(batch), params.minibatch_size):
            loss, stats = kickstart_loss(student, value, batch[order[start:start + params.minibatch_size]], weight,
                                         kd_fn, params)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(student.parameters(), params.max_grad_norm)
            nn.utils.clip_grad_norm_(value.parameters(), params.max_grad_norm)
            opt.step()
            parts.append(stats)
    student.eval()
    out = {k: float(np.mean([p[k] for p in parts])) for k in parts[0]}
    with torch.no_grad():
        out["explained_variance"] = (1 - (batch.ret - value(batch.x)).var() / batch.ret.var().clamp_min(1e-8)).item()
    if not all(math.isfinite(v) for v in out.values()):
        raise FloatingPointError(f"kickstart losses became non-finite ({out}); lower lr (now {params.lr})")
    return out


def _teacher_has_std(bank: TeacherBank, suite: Suite) -> bool:
    envs = [suite.make_env(i) for i in range(len(suite.tasks))]
    try:
        return bank.label(stack_obs([env.reset(seed=0)[0] for env in envs])).std is not None
    finally:
        for env in envs:
            env.close()


def kickstart(params: KickstartParams, suite: Suite, teachers: dict[str, Policy], out: str | Path,
              student_groups: Sequence[str] = ("policy", "task"), hidden: Sequence[int] = (256, 256)) -> dict[str, Any]:
    """Kickstart a Gaussian student from per-task ``teachers`` for ``params.rounds`` rounds; returns the
    content of ``out/kickstart.json``. ``out`` must not hold a finished or partial run already."""
    missing = [n for n in suite.task_names if n not in teachers]
    if missing:
        raise ValueError(f"no teacher for tasks {missing}; teachers given: {sorted(teachers)}")
    out = Path(out)
    summary_path = out / "kickstart.json"
    if summary_path.exists():
        raise FileExistsError(f"{summary_path} exists: kickstarting does not resume, choose another out")
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(params.seed)
    gen = torch.Generator().manual_seed(params.seed)
    bank = TeacherBank([teachers[n] for n in suite.task_names])
    kd_fn = make_loss(params.kd_loss, teacher_has_std=_teacher_has_std(bank, suite), student_has_std=True,
                      **dict(params.kd_loss_params))
    student = build_student(suite, StudentConfig(groups=list(student_groups), hidden=list(hidden), learn_std=True),
                            params.device)
    value = ValueNet(student.obs_dim, params.value_hidden).to(student.device)
    opt = torch.optim.Adam([*student.parameters(), *value.parameters()], lr=params.lr)
    teacher_eval = evaluate_per_task(suite, teachers, params.eval_episodes)
    g_teacher = float(np.mean([teacher_eval[n]["return_mean"] for n in suite.task_names]))
    summary: dict[str, Any] = {"method": "kickstart", "suite": suite.name, "params": asdict(params),
                               "student": {"groups": list(student.groups), "hidden": list(student.hidden)},
                               "teacher": teacher_eval, "teacher_return": g_teacher, "rounds": []}
    capture = _FinalObsSuite(suite.name, suite.tasks, suite.description)
    student.eval()
    t_start = time.perf_counter()
    env_steps = labels_used = 0
    for r in range(params.rounds):
        prev = summary["rounds"][-1] if summary["rounds"] else None
        weight = kd_weight(params, r, prev["student_return"] if prev else None, g_teacher)
        seed = 10_000 + params.seed * 1_000_000 + r * 1000
        records = _collect(capture, student, bank if weight > 0 else None, params, seed)
        steps = sum(rec.episode.length for rec in records)
        env_steps += steps
        labels_used += steps if weight > 0 else 0
        kept = [rec for rec in records if not rec.episode.error]
        if not kept:
            raise RuntimeError(f"round {r}: every episode was dropped ({records[0].episode.error})")
        batch = _batch(kept, capture, student, value, params, set_stats=r == 0)
        losses = _update(student, value, opt, batch, weight, kd_fn, params, gen)
        evals = evaluate_per_task(suite, student, params.eval_episodes)
        per_task = {n: {"return_mean": e["return_mean"], "return_ci95": e["return_ci95"],
                        "success_rate": e["success_rate"], **teacher_normalised(e, teacher_eval[n])}
                    for n, e in evals.items()}
        scores = [t["score"] for t in per_task.values() if t["score"] is not None]
        row = {"round": r, "kd_weight": weight, "env_steps": env_steps, "labels_used": labels_used,
               "wall_time_s": round(time.perf_counter() - t_start, 2),
               "rollout_return": float(np.mean([rec.episode.ret for rec in kept])),
               "student_return": float(np.mean([e["return_mean"] for e in evals.values()])),
               "mean_score": float(np.mean(scores)) if scores else None,
               "student_std": torch.exp(student.log_std).tolist() if student.log_std is not None else None,
               "losses": losses, "tasks": per_task}
        save_bundle(student, out / "student", meta={"kickstart": asdict(params), "round": r, "suite": suite.name})
        summary["rounds"].append(row)
        atomic_write_json(summary_path, summary)
        log.info("round %d: kd weight %.3f, env steps %d, kd loss %.4f, student return %.2f, score %s", r, weight,
                 env_steps, losses["kd"], row["student_return"],
                 "n/a" if row["mean_score"] is None else f"{row['mean_score']:.3f}")
    return summary
