"""``method=kickstart``: stable-baselines3's PPO on the student's own rollouts plus a distillation term.

Each round is ``iterations_per_round`` PPO iterations (``n_steps`` steps in each of ``n_envs`` envs spread
over the suite's tasks; SB3's rollout buffer, GAE with bootstrapping on truncation, clipped surrogate,
value loss, entropy bonus, gradient clipping), and the student and its value network minimise::

    ppo_loss + kd_weight(round) * loss(student mean / log std, teacher label)

The teachers label every state the student visits: the env's observation carries, past the student's
groups, the teacher bank's label (mean, and std where it has one), which the policy's feature extractor
leaves out and the distillation term reads from SB3's rollout buffer. The term is added to SB3's loss
through the optimiser: its ``zero_grad`` back-propagates it just before SB3 back-propagates the PPO loss,
so the gradient clipped and applied is that of the sum. ``kd_weight`` starts at ``kd_weight_start`` and
decays per round: ``exponential`` (``start * rate ** round``), ``linear`` (to 0 at round
``kd_decay_rounds``) or ``return_ratio`` (``start * clip(1 - G_student / G_teacher, 0, 1)`` from the last
evaluation). Once it reaches 0 the student is trained on the env reward only, so it may exceed its
teachers. ``loss`` is any loss of the menu (:mod:`policydistill.distill.losses`). Labels count as used
while the weight is positive.

The student is the run's MLP student (its normaliser, network and learned std are the PPO actor; a padded
generalist when the suite's tasks differ in their spaces: each env then runs in the widest spaces, the
log-probabilities, entropy and distillation term count each task's real action dims only); the
normaliser is fitted on the first rollout, whose values and log-probabilities are then recomputed.
Rewards are normalised for the critic (SB3's VecNormalize); observations are not touched. The value
network and the optimiser are checkpointed with the run, so a rerun resumes (episodes in progress
restart). The rollouts are SB3's: nothing goes to the episode store, and ``collector`` does not apply.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from stable_baselines3 import PPO
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
from stable_baselines3.common.utils import obs_as_tensor
from stable_baselines3.common.vec_env import DummyVecEnv, VecEnv, VecEnvWrapper, VecNormalize
from torch import nn

from policydistill.configs import refuse_unread, require_choice, require_int, require_ints, require_lr, require_number
from policydistill.data.shards import EpisodeStore
from policydistill.distill.algorithm import Algorithm, Context, FitWith
from policydistill.distill.collect import suite_layout, teacher_has_std
from policydistill.distill.losses import LOSSES, LossFn, make_loss, sum_dims
from policydistill.distill.schedules import AdaptiveBeta, BetaSchedule, ExponentialBeta, LinearBeta
from policydistill.models.base import TorchPolicy
from policydistill.models.generalist import SpaceLayout, pad_columns
from policydistill.models.students import build_student
from policydistill.policy import Teacher
from policydistill.suites import Suite

KD_DECAYS = ("exponential", "linear", "return_ratio")


@dataclass
class KickstartConfig:
    """``method=kickstart`` (see the module doc): ``rounds`` rounds of ``iterations_per_round`` PPO iterations
    of ``n_steps`` steps in each of ``n_envs`` envs; PPO's ``lr``, ``n_epochs`` passes over each rollout in
    minibatches of ``batch_size``, ``gamma``, ``gae_lambda``, ``clip_range``, ``ent_coef``, ``vf_coef``,
    ``max_grad_norm``, ``normalize_advantage``; a ``value_hidden`` tanh critic. The distillation term:
    ``loss`` (+ ``loss_params``) weighted by ``kd_weight_start`` decaying by ``kd_decay`` (``kd_decay_rate``
    for exponential, ``kd_decay_rounds`` for linear)."""

    rounds: int = 6
    iterations_per_round: int = 1
    n_envs: int = 8
    n_steps: int = 200
    loss: str = "forward_kl"
    loss_params: dict[str, Any] = field(default_factory=dict)
    kd_weight_start: float = 1.0
    kd_decay: str = "exponential"
    kd_decay_rate: float = 0.7
    kd_decay_rounds: int = 10
    lr: float = 3e-4
    n_epochs: int = 10
    batch_size: int = 64
    gamma: float = 0.99
    gae_lambda: float = 0.95
    clip_range: float = 0.2
    ent_coef: float = 0.0
    vf_coef: float = 0.5
    max_grad_norm: float = 0.5
    normalize_advantage: bool = True
    value_hidden: list[int] = field(default_factory=lambda: [64, 64])

    def __post_init__(self) -> None:
        for name in ("rounds", "iterations_per_round", "n_envs", "n_steps", "n_epochs", "batch_size",
                     "kd_decay_rounds"):
            require_int(f"method.{name}", getattr(self, name))
        require_choice("loss", self.loss, sorted(LOSSES))
        require_choice("method.kd_decay", self.kd_decay, KD_DECAYS)
        require_number("method.gamma", self.gamma, 0.0, 1.0)
        require_number("method.gae_lambda", self.gae_lambda, 0.0, 1.0)
        require_number("method.clip_range", self.clip_range, 0.0, 1.0, low_open=True)
        require_lr("method.lr", self.lr)
        require_number("method.ent_coef", self.ent_coef, 0.0)
        require_number("method.vf_coef", self.vf_coef, 0.0, low_open=True)
        require_number("method.max_grad_norm", self.max_grad_norm, 0.0, low_open=True)
        require_number("method.kd_weight_start", self.kd_weight_start, 0.0)
        require_number("method.kd_decay_rate", self.kd_decay_rate, 0.0, 1.0)
        require_ints("method.value_hidden", self.value_hidden)
        decay = {"exponential": {"kd_decay_rate"}, "linear": {"kd_decay_rounds"}, "return_ratio": set()}
        read = set(self.__dataclass_fields__) - {"kd_decay_rate", "kd_decay_rounds"} | decay[self.kd_decay]
        refuse_unread(self, read, f"kd_decay '{self.kd_decay}'", "method.")

    @property
    def steps_per_round(self) -> int:
        return self.iterations_per_round * self.n_steps * self.n_envs


def kd_schedule(cfg: KickstartConfig) -> BetaSchedule:
    """The decay factor in [0, 1] per round (``kd_weight = kd_weight_start * factor``)."""
    if cfg.kd_decay == "exponential":
        return ExponentialBeta(decay=cfg.kd_decay_rate)
    if cfg.kd_decay == "linear":
        return LinearBeta(rounds=cfg.kd_decay_rounds)
    return AdaptiveBeta()


def kd_weight(cfg: KickstartConfig, round: int, student_return: float | None = None,
              teacher_return: float | None = None) -> float:
    """The distillation weight of ``round``; ``return_ratio`` reads the last evaluated returns (the start
    weight while there is no student return yet or the teacher return is not positive)."""
    return float(cfg.kd_weight_start * kd_schedule(cfg)(round, student_return, teacher_return))


class PaddedTask(gym.Wrapper):
    """One task's env in the suite's widest spaces (see :class:`~policydistill.models.generalist.SpaceLayout`):
    every observation group zero-padded to its widest dim, the action the widest, of which the task takes its
    own dims (clipped to its bounds). Only the groups every task has are kept."""

    def __init__(self, env: gym.Env, layout: SpaceLayout, low: np.ndarray, high: np.ndarray) -> None:
        super().__init__(env)
        self.layout, self.act_dim = layout, int(env.action_space.shape[0])
        self.observation_space = gym.spaces.Dict({g: gym.spaces.Box(-np.inf, np.inf, (layout.width(g),), np.float32)
                                                  for g in layout.groups})
        self.action_space = gym.spaces.Box(low, high, dtype=np.float32)

    def _pad(self, obs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {g: pad_columns(obs[g][None], self.layout.width(g))[0] for g in self.layout.groups}

    def reset(self, **kwargs: Any) -> tuple[dict[str, np.ndarray], dict]:
        obs, info = self.env.reset(**kwargs)
        return self._pad(obs), info

    def step(self, action: np.ndarray) -> tuple[Any, ...]:
        a = np.clip(action[:self.act_dim], self.env.action_space.low, self.env.action_space.high)
        obs, reward, terminated, truncated, info = self.env.step(a)
        return self._pad(obs), reward, terminated, truncated, info


class LabelledObs(VecEnvWrapper):
    """Envs of tasks ``row_tasks`` (in the suite's padded spaces) -> flat observations ``[student groups | label
    mean | label std]``, the label from ``teacher`` on every step, asked on each row's own (unpadded) groups,
    the rows of tasks sharing their spaces at once; terminal observations get zero labels (nothing is learnt on
    them)."""

    def __init__(self, venv: VecEnv, groups: tuple[str, ...], teacher: Teacher, layout: SpaceLayout,
                 row_tasks: list[int], with_std: bool) -> None:
        self.groups, self.teacher, self.layout, self.with_std = groups, teacher, layout, with_std
        self.act_dim = layout.act_width
        self.width = sum(layout.width(g) for g in groups)
        dims = [tuple(sorted(layout.group_dims[t].items())) + (layout.act_dims[t],) for t in row_tasks]
        self.blocks = [(np.flatnonzero([d == k for d in dims]), row_tasks[dims.index(k)]) for k in dict.fromkeys(dims)]
        total = self.width + self.act_dim * (2 if with_std else 1)
        super().__init__(venv, observation_space=gym.spaces.Box(-np.inf, np.inf, (total,), np.float32))

    def _labels(self, obs: dict[str, np.ndarray]) -> list[np.ndarray]:
        n = len(obs[self.groups[0]])
        mean, std = np.zeros((n, self.act_dim), np.float32), np.ones((n, self.act_dim), np.float32)
        for rows, task in self.blocks:
            dims = self.layout.group_dims[task]
            label = self.teacher.label({g: np.asarray(v[rows, :dims[g]], np.float32) for g, v in obs.items()})
            d = self.layout.act_dims[task]
            mean[rows, :d] = label.mean
            if self.with_std:
                std[rows, :d] = label.std
        return [mean, std] if self.with_std else [mean]

    def _flat(self, obs: dict[str, np.ndarray], labels: bool = True) -> np.ndarray:
        x = [np.asarray(obs[g], dtype=np.float32).reshape(len(obs[self.groups[0]]), -1) for g in self.groups]
        n = len(x[0])
        x += self._labels(obs) if labels else [np.zeros((n, self.act_dim * (2 if self.with_std else 1)), np.float32)]
        return np.concatenate(x, axis=1).astype(np.float32)

    def reset(self) -> np.ndarray:
        self.teacher.reset(None)
        return self._flat(self.venv.reset())

    def step_wait(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[dict]]:
        obs, reward, done, infos = self.venv.step_wait()
        for info in infos:
            if "terminal_observation" in info:
                final = {g: v[None] for g, v in info["terminal_observation"].items()}
                info["terminal_observation"] = self._flat(final, labels=False)[0]
        if done.any():
            self.teacher.reset(done)
        return self._flat(obs), reward, done, infos


class StudentInputs(BaseFeaturesExtractor):
    """The student's columns of the flat observation (the labels after them are left out)."""

    def __init__(self, observation_space: gym.spaces.Box, width: int) -> None:
        super().__init__(observation_space, features_dim=width)
        self.width = width

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return obs[:, :self.width]


class KickstartOptimizer(torch.optim.Adam):
    """Adam whose ``zero_grad`` back-propagates the pending distillation term after zeroing, so that the
    backward SB3 runs next accumulates the PPO loss's gradient on top of it."""

    pending: torch.Tensor | None = None

    def zero_grad(self, set_to_none: bool = True) -> None:
        super().zero_grad(set_to_none)
        if self.pending is not None:
            pending, self.pending = self.pending, None
            pending.backward()


class StudentActorCritic(ActorCriticPolicy):
    """SB3's actor-critic with the student as the actor (see :meth:`attach`), log-probabilities and entropy over
    each row's real action dims (a student padded over tasks with different spaces), and the distillation term."""

    def attach(self, student: TorchPolicy, kd_fn: LossFn, lr: float) -> None:
        """Make ``student`` the actor (its normaliser, network and learned std); the critic reads the
        student's normalised inputs; the optimiser (re)built over both."""
        self.student, self.kd_fn, self.kd_weight = student, kd_fn, 0.0
        self.kd_values: list[float] = []
        self.action_net = StudentMean(student)
        self.log_std = student.log_std
        self.mlp_extractor.value_net = nn.Sequential(student.normalizer, self.mlp_extractor.value_net)
        self.optimizer = KickstartOptimizer(self.parameters(), lr=lr, eps=1e-5)

    def _heads(self, obs: torch.Tensor) -> tuple[Any, torch.Tensor, torch.Tensor | None]:
        """The action distribution, the value and the real action dims (B, act_dim) (None: all) of ``obs``."""
        latent_pi, latent_vf = self.mlp_extractor(self.extract_features(obs))
        mask = self.student.loss_mask(obs[:, :self.student.obs_dim])
        return self._get_action_dist_from_latent(latent_pi), self.value_net(latent_vf), mask

    def forward(self, obs: torch.Tensor, deterministic: bool = False
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        distribution, values, mask = self._heads(obs)
        actions = distribution.get_actions(deterministic=deterministic)
        log_prob = sum_dims(distribution.distribution.log_prob(actions), mask)
        return actions.reshape((-1, *self.action_space.shape)), values, log_prob

    def evaluate_actions(self, obs: torch.Tensor, actions: torch.Tensor
                         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        distribution, values, mask = self._heads(obs)
        log_prob = sum_dims(distribution.distribution.log_prob(actions), mask)
        entropy = sum_dims(distribution.distribution.entropy(), mask)
        if self.training and self.kd_weight > 0:
            w, a = self.student.obs_dim, self.student.act_dim
            std = obs[:, w + a:w + 2 * a] if obs.shape[1] >= w + 2 * a else None
            kd = self.kd_fn(self.student.raw(obs[:, :w]), obs[:, w:w + a], student_log_std=self.student.log_std,
                            teacher_std=std, mask=mask)
            self.kd_values.append(kd.item())
            self.optimizer.pending = self.kd_weight * kd
        return values, log_prob, entropy


class StudentMean(nn.Module):
    """The actor's mean: the student's network output on the (raw) inputs, x (n, obs_dim) -> (n, act_dim)."""

    def __init__(self, student: TorchPolicy) -> None:
        super().__init__()
        self.student = student

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.student.raw(x)


class FitNormalizerOnce(BaseCallback):
    """After the first rollout: fit the student's normaliser to its inputs, then recompute the rollout's
    values, log-probabilities, returns and advantages with it."""

    def __init__(self, algo: Kickstart) -> None:
        super().__init__()
        self.algo = algo

    def _on_step(self) -> bool:
        return True

    def _on_rollout_end(self) -> None:
        if self.algo.fitted:
            return
        buf, policy = self.model.rollout_buffer, self.model.policy
        obs = buf.observations.reshape(-1, buf.observations.shape[-1])
        self.algo.student.fit_normalizer(obs[:, :self.algo.student.obs_dim])
        with torch.no_grad():
            values, log_prob, _ = policy.evaluate_actions(obs_as_tensor(obs, self.model.device),
                                                         obs_as_tensor(buf.actions.reshape(len(obs), -1),
                                                                       self.model.device))
            last = policy.predict_values(obs_as_tensor(self.locals["new_obs"], self.model.device))
        buf.values = values.cpu().numpy().reshape(buf.values.shape)
        buf.log_probs = log_prob.cpu().numpy().reshape(buf.log_probs.shape)
        buf.compute_returns_and_advantage(last_values=last, dones=self.locals["dones"])
        self.algo.fitted = True


def student_envs(suite: Suite, row_tasks: list[int], layout: SpaceLayout, seed: int) -> DummyVecEnv:
    """One env per entry of ``row_tasks`` (its task), SB3-monitored, in the suite's padded spaces when its tasks
    differ (the action bounds: the widest over the tasks, padded dims [0, 0])."""
    low = np.min([pad_columns(a.low[None], layout.act_width)[0] for _, a in suite.spaces], axis=0)
    high = np.max([pad_columns(a.high[None], layout.act_width)[0] for _, a in suite.spaces], axis=0)

    def make(task: int) -> gym.Env:
        env = suite.make_env(task)
        return Monitor(env if layout.uniform else PaddedTask(env, layout, low, high))

    envs = DummyVecEnv([lambda t=t: make(t) for t in row_tasks])
    envs.seed(seed)
    return envs


class Kickstart(Algorithm):
    name = "kickstart"
    config = KickstartConfig
    collects = False
    not_read = "kickstarting collects through stable-baselines3's rollouts (method.n_envs, method.n_steps)"

    def __init__(self, cfg: KickstartConfig, ctx: Context) -> None:
        super().__init__(cfg, ctx)
        if ctx.student.kind != "mlp":
            raise ValueError(f"kickstart trains MLP students; student kind '{ctx.student.kind}' trains with "
                             "method=bc|dagger|onpolicy")
        student = build_student(ctx.suite, ctx.student, ctx.device)
        if student.log_std is None:
            student.log_std = nn.Parameter(torch.zeros(student.act_dim, device=student.device))
        self.student = student
        has_std = teacher_has_std(ctx.bank, ctx.suite)
        kd_fn = make_loss(cfg.loss, teacher_has_std=has_std, student_has_std=True, **dict(cfg.loss_params))
        layout = suite_layout(ctx.suite)
        row_tasks = [i % len(ctx.suite.tasks) for i in range(cfg.n_envs)]
        venv = LabelledObs(student_envs(ctx.suite, row_tasks, layout, ctx.seed), student.groups, ctx.bank, layout,
                           row_tasks, has_std)
        self.venv = VecNormalize(venv, norm_obs=False, norm_reward=True, gamma=cfg.gamma)
        self.model = PPO(StudentActorCritic, self.venv, learning_rate=cfg.lr, n_steps=cfg.n_steps,
                         batch_size=cfg.batch_size, n_epochs=cfg.n_epochs, gamma=cfg.gamma, gae_lambda=cfg.gae_lambda,
                         clip_range=cfg.clip_range, ent_coef=cfg.ent_coef, vf_coef=cfg.vf_coef,
                         max_grad_norm=cfg.max_grad_norm, normalize_advantage=cfg.normalize_advantage,
                         policy_kwargs={"net_arch": {"pi": [], "vf": list(cfg.value_hidden)}, "ortho_init": False,
                                        "features_extractor_class": StudentInputs,
                                        "features_extractor_kwargs": {"width": student.obs_dim}},
                         seed=ctx.seed, device=ctx.device, verbose=0)
        self.model.policy.attach(student, kd_fn, cfg.lr)
        self.fitted = False
        self.last_return: float | None = None
        self.teacher_return: float | None = None

    def collect(self, round: int, prev: dict[str, Any] | None, teacher_return: float) -> None:
        """Nothing: SB3 collects within :meth:`update`. The last evaluated student return and the teachers' are
        kept for ``kd_decay=return_ratio``."""
        self.last_return = prev["student_return"] if prev else None
        self.teacher_return = teacher_return

    def update(self, store: EpisodeStore | None, round: int, fit_with: FitWith) -> dict[str, Any]:
        cfg, policy = self.cfg, self.model.policy
        policy.kd_weight = kd_weight(cfg, round, self.last_return, self.teacher_return)
        policy.kd_values = []
        before = self.model.num_timesteps
        self.model.learn(cfg.steps_per_round, callback=FitNormalizerOnce(self), reset_num_timesteps=before == 0,
                         progress_bar=False)
        steps = self.model.num_timesteps - before
        logged = self.model.logger.name_to_value
        losses = {k: float(logged[f"train/{key}"]) for k, key in (
            ("policy", "policy_gradient_loss"), ("value", "value_loss"), ("entropy", "entropy_loss"),
            ("approx_kl", "approx_kl"), ("clip_fraction", "clip_fraction"),
            ("explained_variance", "explained_variance")) if f"train/{key}" in logged}
        kd = float(np.mean(policy.kd_values)) if policy.kd_values else 0.0
        losses["kd"] = kd
        if not all(math.isfinite(v) for v in losses.values()):
            raise FloatingPointError(f"kickstart losses became non-finite ({losses}); lower method.lr (now {cfg.lr})")
        episodes = [e["r"] for e in self.model.ep_info_buffer]
        return {"loss": kd, "losses": losses, "updates": cfg.iterations_per_round * cfg.n_epochs * math.ceil(
                    cfg.n_steps * cfg.n_envs / cfg.batch_size), "env_steps": steps,
                "labels": steps if policy.kd_weight > 0 else 0,
                "info": {"kd_weight": policy.kd_weight, "student_std": torch.exp(self.student.log_std).tolist(),
                         "rollout_return": float(np.mean(episodes)) if episodes else None}}

    def policy(self) -> TorchPolicy:
        return self.student

    def state_dict(self) -> dict[str, Any]:
        rms = self.venv.ret_rms
        return {"policy": self.model.policy.state_dict(), "optimizer": self.model.policy.optimizer.state_dict(),
                "fitted": self.fitted, "num_timesteps": self.model.num_timesteps,
                "ret_rms": {"mean": float(rms.mean), "var": float(rms.var), "count": float(rms.count)}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.policy.load_state_dict(state["policy"])
        self.model.policy.optimizer.load_state_dict(state["optimizer"])
        self.fitted, self.model.num_timesteps = bool(state["fitted"]), int(state["num_timesteps"])
        rms = self.venv.ret_rms
        rms.mean, rms.var, rms.count = (np.float64(state["ret_rms"][k]) for k in ("mean", "var", "count"))

    def close(self) -> None:
        self.venv.close()
