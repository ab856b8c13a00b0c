"""Kickstarting as rounds of the distillation loop (:mod:`policydistill.distill.loop`, ``method=kickstart``):
PPO on the student's own rollouts plus a distillation loss to the teachers.

Each round the student acts alone (sampled actions) in envs spread over the suite's tasks, the
:class:`TeacherBank` labels every visited state, and the student and its value network minimise::

    ppo_loss + kd_weight(round) * distill_loss(student mean / log std, teacher label)

``kd_weight`` starts at ``kickstart.kd_weight_start`` and decays per round: ``exponential``
(``start * rate ** round``), ``linear`` (to 0 at round ``kd_decay_rounds``) or ``return_ratio``
(``start * clip(1 - G_student / G_teacher, 0, 1)`` from the last evaluation). Once it reaches 0 the
student is trained on the env reward only, so it may exceed its teachers. ``distill_loss`` is the
config's ``loss``, any loss of the menu in :mod:`policydistill.distill.losses`. Labels count as used
while the weight is positive.

The round's episodes go to the episode store (``actor`` = student on every step), which keeps only the
last round. The value network is checkpointed with the student, so a rerun resumes; it is a training
aid and not part of the student bundle. Tasks with different spaces work as in DAgger: padded student,
loss and log-probabilities over each task's real action dims.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from torch import nn

from policydistill.config import DistillConfig, KickstartConfig
from policydistill.data.shards import ShardWriter, evict
from policydistill.distill.collect import STUDENT, space_groups, task_spaces
from policydistill.distill.losses import LossFn
from policydistill.distill.schedules import AdaptiveBeta, BetaSchedule, ExponentialBeta, LinearBeta
from policydistill.eval.rollout import EnvPool, EpisodeRecord, rollout
from policydistill.models.generalist import GeneralistPolicy, SpaceLayout, action_mask, fit_normalizer, pad_columns
from policydistill.models.mlp_policy import MLPPolicy
from policydistill.models.normalizer import ObsNormalizer
from policydistill.suite import Suite
from policydistill.teachers import TeacherBank
from policydistill.types import TASK, select_groups

log = logging.getLogger(__name__)

KD_DECAYS = ("exponential", "linear", "return_ratio")
Student = MLPPolicy | GeneralistPolicy


def _count(name: str, value: Any, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"kickstart.{name} must be an int >= {minimum}, got {value!r}")


def _number(name: str, value: Any, low: float, high: float, low_open: bool = False) -> None:
    ok = not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
    ok = ok and (value > low if low_open else value >= low) and value <= high
    if not ok:
        bracket = "(" if low_open else "["
        raise ValueError(f"kickstart.{name} must be a number in {bracket}{low}, {high}], got {value!r}")


def check_params(params: KickstartConfig) -> KickstartConfig:
    """Validate the kickstart settings; errors name the key and the valid range. Returns ``params``."""
    for name in ("epochs", "minibatch_size", "kd_decay_rounds"):
        _count(name, getattr(params, name))
    _number("gamma", params.gamma, 0.0, 1.0)
    _number("gae_lambda", params.gae_lambda, 0.0, 1.0)
    _number("clip_range", params.clip_range, 0.0, 1.0, low_open=True)
    _number("lr", params.lr, 0.0, 1.0, low_open=True)
    _number("ent_coef", params.ent_coef, 0.0, math.inf)
    _number("vf_coef", params.vf_coef, 0.0, math.inf, low_open=True)
    _number("max_grad_norm", params.max_grad_norm, 0.0, math.inf, low_open=True)
    _number("kd_weight_start", params.kd_weight_start, 0.0, math.inf)
    _number("kd_decay_rate", params.kd_decay_rate, 0.0, 1.0)
    if params.kd_decay not in KD_DECAYS:
        raise ValueError(f"unknown kickstart.kd_decay '{params.kd_decay}'; expected one of {list(KD_DECAYS)}")
    if not params.value_hidden or any(isinstance(h, bool) or not isinstance(h, int) or h < 1
                                      for h in params.value_hidden):
        raise ValueError(f"kickstart.value_hidden must be a non-empty list of ints >= 1, got {params.value_hidden!r}")
    return params


def kd_schedule(params: KickstartConfig) -> BetaSchedule:
    """The decay factor in [0, 1] per round (``kd_weight = kd_weight_start * factor``)."""
    if params.kd_decay == "exponential":
        return ExponentialBeta(decay=params.kd_decay_rate)
    if params.kd_decay == "linear":
        return LinearBeta(rounds=params.kd_decay_rounds)
    return AdaptiveBeta()


def kd_weight(params: KickstartConfig, round: int, student_return: float | None = None,
              teacher_return: float | None = None) -> float:
    """The distillation weight of ``round``; ``return_ratio`` reads the last evaluated returns (the
    start weight while there is no student return yet or the teacher return is not positive)."""
    return float(params.kd_weight_start * kd_schedule(params)(round, student_return, teacher_return))


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
    (N, act_dim) and ``label_std`` (N, act_dim) or None, ``mask`` (N, act_dim) the real action dims of a
    padded student (None for an unpadded one)."""

    x: torch.Tensor
    sample: torch.Tensor
    old_logp: torch.Tensor
    advantage: torch.Tensor
    ret: torch.Tensor
    label_mean: torch.Tensor
    label_std: torch.Tensor | None = None
    mask: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, idx: torch.Tensor) -> Batch:
        def take(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t[idx]

        return Batch(self.x[idx], self.sample[idx], self.old_logp[idx], self.advantage[idx], self.ret[idx],
                     self.label_mean[idx], take(self.label_std), take(self.mask))


def _log_prob(student: Student, mean: torch.Tensor, sample: torch.Tensor,
              mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-density of ``sample`` (n, d) under N(mean, std) and its entropy, each (n,), over the real dims."""
    assert student.log_std is not None
    dist = torch.distributions.Normal(mean, torch.exp(student.log_std).expand_as(mean))
    logp, entropy = dist.log_prob(sample), dist.entropy()
    if mask is not None:
        logp, entropy = torch.where(mask, logp, 0.0), torch.where(mask, entropy, 0.0)
    return logp.sum(-1), entropy.sum(-1)


def kickstart_loss(student: Student, value: ValueNet, batch: Batch, weight: float, kd_fn: LossFn,
                   params: KickstartConfig) -> tuple[torch.Tensor, dict[str, float]]:
    """``ppo_loss + weight * kd_fn(student mean, teacher mean, log stds)`` on one minibatch, where
    ``ppo_loss = clipped surrogate - ent_coef * entropy + vf_coef * value MSE``; the scalar loss and its parts."""
    mean = student.raw(batch.x)
    logp, entropy = _log_prob(student, mean, batch.sample, batch.mask)
    ratio = torch.exp(logp - batch.old_logp)
    adv = batch.advantage
    surrogate = torch.min(ratio * adv, torch.clamp(ratio, 1 - params.clip_range, 1 + params.clip_range) * adv)
    policy_loss = -surrogate.mean()
    value_loss = (value.normalised(batch.x) - (batch.ret - value.ret_mean) / value.ret_std).pow(2).mean()
    loss = policy_loss - params.ent_coef * entropy.mean() + params.vf_coef * value_loss
    kd = torch.zeros(())
    if weight > 0:
        kd = kd_fn(mean, batch.label_mean, student_log_std=student.log_std, teacher_std=batch.label_std,
                   mask=batch.mask)
        loss = loss + weight * kd
    with torch.no_grad():
        stats = {"policy": policy_loss.item(), "value": value_loss.item(), "kd": kd.item(),
                 "entropy": entropy.mean().item(), "approx_kl": ((ratio - 1) - torch.log(ratio)).mean().item(),
                 "clip_fraction": ((ratio - 1).abs() > params.clip_range).float().mean().item()}
    return loss, stats


def _collect(suite: _FinalObsSuite, student: Student, bank: TeacherBank, n_envs: int, episodes_per_task: int,
             seed: int, pool: EnvPool | None = None) -> list[EpisodeRecord]:
    """Student-only episodes of every task recording ``sample`` (the student's pre-clip Gaussian sample, its
    full width) and the bank's ``label_mean`` [``label_std``] per step; tasks of one space per batch."""

    def act(obs: dict[str, np.ndarray]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        label = bank.label(obs)
        with torch.no_grad():
            x = student.obs_tensor(select_groups(obs, student.groups))
            mean = student.raw(x)
            sample = mean + student.std(len(mean)) * torch.randn_like(mean)
            if isinstance(student, GeneralistPolicy):
                action = student.postprocess(sample, x)[:, :label.mean.shape[1]]
            else:
                action = student.postprocess(sample)
        extras = {"sample": sample.cpu().numpy().astype(np.float32), "actor": np.full(len(x), STUDENT, np.uint8),
                  "label_mean": label.mean.astype(np.float32)}
        if label.std is not None:
            extras["label_std"] = label.std.astype(np.float32)
        return action.cpu().numpy().astype(np.float32), extras

    suite.finals.clear()
    records = []
    for same_space in space_groups(suite, list(range(len(suite.tasks)))):
        bank.reset(None)
        records += rollout(suite, same_space, act, episodes_per_task, n_envs=n_envs, seed=seed, on_reset=bank.reset,
                           record=True, pool=pool)
    return sorted(records, key=lambda r: (r.task_index, r.episode.seed))


def _batch(records: list[EpisodeRecord], finals: dict[tuple[int, int], dict[str, np.ndarray]], student: Student,
           value: ValueNet, params: KickstartConfig, layout: SpaceLayout, set_stats: bool) -> Batch:
    """Advantages, returns and old log-probs of the (padded) episodes; normaliser stats on the first round."""
    dev = student.device
    steps = [layout.pad_steps(r.steps) for r in records]

    def cat(key: str) -> torch.Tensor | None:
        return torch.as_tensor(np.concatenate([s[key] for s in steps]), device=dev) if key in steps[0] else None

    x_np = np.concatenate([np.concatenate([s[f"obs/{g}"] for g in student.groups], axis=1) for s in steps])
    if set_stats:
        fit_normalizer(student, x_np)
        fit_normalizer(value, x_np)
    final_x = np.stack([np.concatenate([pad_columns(finals[(r.task_index, r.episode.seed)][g][None], layout.width(g))[0]
                                        for g in student.groups]) for r in records])
    task = np.concatenate([s[f"obs/{TASK}"] for s in steps]).argmax(1)
    mask = action_mask(student, task)
    with torch.no_grad():
        x = torch.as_tensor(x_np, device=dev)
        v = value(x).cpu().numpy()
        v_final = value(torch.as_tensor(final_x, device=dev)).cpu().numpy()
        sample = cat("sample")
        old_logp, _ = _log_prob(student, student.raw(x), sample, mask)
    lengths = np.array([r.episode.length for r in records])
    ends = np.cumsum(lengths) - 1
    episode_end = np.zeros(len(x_np), dtype=bool)
    episode_end[ends] = True
    next_v = np.append(v[1:], 0.0)
    next_v[ends] = v_final
    terminated = np.concatenate([s["terminated"] for s in steps])
    adv, ret = gae(np.concatenate([s["reward"] for s in steps]), v, next_v, terminated, episode_end, params.gamma,
                   params.gae_lambda)
    if params.normalize_advantage and len(adv) > 1:
        adv = (adv - adv.mean()) / (adv.std() + 1e-8)
    ret_t = torch.as_tensor(ret, device=dev)
    value.update_return_stats(ret_t, momentum=1.0 if set_stats else 0.5)
    return Batch(x, sample, old_logp, torch.as_tensor(adv, device=dev), ret_t, cat("label_mean"), cat("label_std"),
                 mask)


def _update(student: Student, value: ValueNet, opt: torch.optim.Optimizer, batch: Batch, weight: float,
            kd_fn: LossFn, params: KickstartConfig, gen: torch.Generator) -> dict[str, float]:
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
        raise FloatingPointError(f"kickstart losses became non-finite ({out}); lower kickstart.lr (now {params.lr})")
    return out


class KickstartRounds:
    """One kickstarting round for the distillation loop: collect (student samples, teachers label), store,
    then PPO + weighted distillation over the round's states."""

    def __init__(self, cfg: DistillConfig, suite: Suite, bank: TeacherBank, student: Student, loss_fn: LossFn,
                 out: Path, first_round: int) -> None:
        self.params = check_params(cfg.kickstart)
        if student.log_std is None:
            raise ValueError("kickstarting needs a student with a learned std (student.learn_std=true)")
        self.cfg, self.bank, self.student, self.kd_fn = cfg, bank, student, loss_fn
        self.capture = _FinalObsSuite(suite.name, suite.tasks, suite.description)
        self.layout = SpaceLayout.from_spaces(*zip(*task_spaces(suite), strict=True))
        self.value = ValueNet(student.obs_dim, self.params.value_hidden).to(student.device)
        self.opt = torch.optim.Adam([*student.parameters(), *self.value.parameters()], lr=self.params.lr)
        self.gen = torch.Generator().manual_seed(cfg.seed + 7919 * first_round)
        self.writer = ShardWriter(out / "episodes")
        self.root = out / "episodes"
        self.pool = EnvPool(self.capture)

    def run_round(self, r: int, prev: dict[str, Any] | None, teacher_return: float) -> dict[str, Any]:
        """Collect, store and update for round ``r``; the row's method numbers."""
        weight = kd_weight(self.params, r, prev["student_return"] if prev else None, teacher_return)
        seed = 10_000 + self.cfg.seed * 1_000_000 + r * 1000
        self.student.eval()
        t0 = time.perf_counter()
        records = _collect(self.capture, self.student, self.bank, self.cfg.n_envs, self.cfg.episodes_per_task, seed,
                           self.pool)
        steps = sum(rec.episode.length for rec in records)
        kept = [rec for rec in records if not rec.episode.error]
        if not kept:
            raise RuntimeError(f"round {r}: every episode was dropped ({records[0].episode.error})")
        for rec in kept:
            stored = {k: v for k, v in self.layout.pad_steps(rec.steps).items() if k != "sample"}
            self.writer.add(stored, {"task": rec.episode.task, "task_index": rec.task_index, "seed": rec.episode.seed,
                                     "success": rec.episode.success, "round": r, "beta": 0.0,
                                     "return": rec.episode.ret})
        self.writer.flush()
        kept_steps = sum(rec.episode.length for rec in kept)
        t_collect = time.perf_counter() - t0
        evict(self.root, kept_steps)
        batch = _batch(kept, self.capture.finals, self.student, self.value, self.params, self.layout, set_stats=r == 0)
        losses = _update(self.student, self.value, self.opt, batch, weight, self.kd_fn, self.params, self.gen)
        return {"beta": 0.0, "kd_weight": weight, "env_steps": steps, "labels": steps if weight > 0 else 0,
                "dataset_steps": kept_steps, "loss": losses["kd"],
                "rollout_return": float(np.mean([rec.episode.ret for rec in kept])),
                "student_std": torch.exp(self.student.log_std).tolist(), "losses": losses,
                "collect_time_s": round(t_collect, 2), "update_time_s": round(time.perf_counter() - t0 - t_collect, 2)}

    def close(self) -> None:
        self.pool.close()

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The value network (with its normaliser and return statistics)."""
        return {f"value.{k}": v for k, v in self.value.state_dict().items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.value.load_state_dict({k[len("value."):]: v for k, v in state.items() if k.startswith("value.")})
