"""Vectorised, seeded rollouts: the one stepping loop behind evaluation, data collection and videos.

The loop (:func:`drive`) steps one :class:`~policydistill.suites.batched.BatchedEnv`: a suite's own batched
tensor env when it names one, else its gymnasium envs, one per row (:class:`~policydistill.suites.batched.GymEnvs`).
The acting function is called once per step on the whole batch ``{group: (n_envs, dim)}``. Row ``i`` runs
episodes of task ``slot_tasks[i]``; episode ``k`` of a task is reset with seed ``seed + k`` whatever the
number of rows, so two policies evaluated with the same seed face the same episodes. Rows are reset by
this loop, never auto-reset: the observation an action is chosen (and labelled) on always belongs to the
episode the action is executed in. Terminated and truncated stay apart.

An episode with a non-finite action, observation (on reset too) or reward, or a fault the env reports as
``episode_error`` (the suite's ``SafeEpisodes`` wrapper), is ended and flagged with the reason, its return
and length up to the fault; the run goes on, and the metrics count it as a failure. Python work is per
step and per finished episode, never per env and step (but for the gymnasium adapter's own loop over its
envs).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from policydistill.eval.metrics import Episode
from policydistill.policy import Policy
from policydistill.spaces import check_spaces
from policydistill.suites import Suite
from policydistill.suites.batched import BatchedEnv, EnvPool, GymEnvs, make_batched_env, obs_to_numpy
from policydistill.suites.wrappers import NAN_ACTION, RESET_FAULT, nonfinite_reason
from policydistill.types import select_groups

log = logging.getLogger(__name__)

# obs {group: (n, dim)} -> actions (n, act_dim) and per-step extras to record {name: (n, ...)}
ActFn = Callable[[dict[str, np.ndarray]], tuple[np.ndarray, dict[str, np.ndarray]]]


@dataclass
class EpisodeRecord:
    """One finished episode; ``steps`` holds per-step arrays (T, ...) when recording was asked for:
    ``obs/<group>``, ``action``, ``reward``, ``terminated``, ``truncated`` and the act function's extras."""

    episode: Episode
    task_index: int
    steps: dict[str, np.ndarray] = field(default_factory=dict)


def check_policy_fits(policy: Policy, suite: Suite, task: int) -> None:
    """Refuse, before any rollout, a policy whose spaces do not match the task's env."""
    obs_space = getattr(policy, "observation_space", None)
    act_space = getattr(policy, "action_space", None)
    if obs_space is None or act_space is None:
        return
    env_obs, env_act = suite.spaces[task]  # built once per suite, not one env per call
    check_spaces(obs_space, act_space, env_obs, env_act,
                 f"policy on task '{suite.tasks[task].name}' of suite '{suite.name}'")


def slot_layout(tasks: Sequence[int], episodes_per_task: int, n_envs: int) -> list[int]:
    """The task of each env slot: at least one slot per task, slot ``i`` runs ``tasks[i % len(tasks)]``."""
    if episodes_per_task < 1 or not tasks:
        raise ValueError(f"need at least one task and episode, got tasks={list(tasks)}, "
                         f"episodes_per_task={episodes_per_task}")
    n = max(len(tasks), min(n_envs, episodes_per_task * len(tasks)))
    return [tasks[i % len(tasks)] for i in range(n)]


def suite_envs(suite: Suite, slot_tasks: Sequence[int], pool: EnvPool | None = None) -> BatchedEnv:
    """The batched env of one rollout: the suite's own factory, or its gymnasium envs (from ``pool``, given
    back when the env is closed)."""
    if suite.batched is not None:
        return make_batched_env(suite, slot_tasks)
    if pool is None:
        return GymEnvs([suite.make_env(t) for t in slot_tasks])
    return GymEnvs([pool.take(t) for t in slot_tasks],
                   on_close=lambda envs: [pool.give(t, e) for t, e in zip(slot_tasks, envs, strict=True)])


def rollout(suite: Suite, tasks: Sequence[int], act: ActFn, episodes_per_task: int, n_envs: int = 8,
            seed: int = 0, on_reset: Callable[[np.ndarray], None] | None = None, record: bool = False,
            on_step: Callable[[int], None] | None = None, pool: EnvPool | None = None) -> list[EpisodeRecord]:
    """Run ``episodes_per_task`` episodes of each task in ``tasks`` on ``n_envs`` rows (at least one per
    task; row ``i`` runs task ``tasks[i % len(tasks)]``). ``on_reset(mask (n_envs,))`` is called when rows
    start a new episode (for stateful policies); ``on_step(n)`` after every step. Returns the finished
    episodes, dropped ones flagged with their ``error``, sorted by task then seed."""
    slot_tasks = slot_layout(tasks, episodes_per_task, n_envs)
    env = suite_envs(suite, slot_tasks, pool)
    try:
        return drive(env, slot_tasks, suite.task_names, act, episodes_per_task, seed, on_reset, record, on_step,
                     env_ids=[t.env for t in suite.tasks])
    finally:
        env.close()


class _History:
    """Per-step batch arrays ``{field: (steps, n_envs, ...)}``, so a finished episode is one slice.

    Rows older than the oldest running episode's start are dropped when the buffer is full.
    """

    def __init__(self) -> None:
        self.data: dict[str, np.ndarray] = {}
        self.offset = 0  # absolute step index of data row 0
        self.t = 0  # absolute index of the next step

    def append(self, step: dict[str, np.ndarray], keep_from: int) -> None:
        if not self.data:
            self.data = {k: np.empty((64, *np.shape(v)), dtype=np.asarray(v).dtype) for k, v in step.items()}
        cap = len(next(iter(self.data.values())))
        if self.t - self.offset == cap:
            drop = max(0, keep_from - self.offset)
            new_cap = 2 * cap if cap - drop > cap // 2 else cap
            for k, v in self.data.items():
                grown = np.empty((new_cap, *v.shape[1:]), dtype=v.dtype)
                grown[:cap - drop] = v[drop:]
                self.data[k] = grown
            self.offset += drop
        row = self.t - self.offset
        for k, v in step.items():
            self.data[k][row] = v
        self.t += 1

    def episode(self, slot: int, start: int) -> dict[str, np.ndarray]:
        """Steps ``start..now`` of row ``slot``: ``{field: (T, ...)}``."""
        return {k: v[start - self.offset:self.t - self.offset, slot].copy() for k, v in self.data.items()}


def drive(env: BatchedEnv, slot_tasks: Sequence[int], task_names: Sequence[str], act: ActFn, episodes_per_task: int,
          seed: int = 0, on_reset: Callable[[np.ndarray], None] | None = None, record: bool = False,
          on_step: Callable[[int], None] | None = None,
          env_ids: Sequence[str] | None = None) -> list[EpisodeRecord]:
    """Run ``episodes_per_task`` episodes of each task of ``slot_tasks`` on ``env`` (row ``i`` runs task
    ``slot_tasks[i]``, a suite task index naming ``task_names`` and, for fault messages, ``env_ids``); see
    :func:`rollout` for the other arguments."""
    n = env.num_envs
    slot_task = np.asarray(slot_tasks, dtype=int)
    if slot_task.shape != (n,):
        raise ValueError(f"slot_tasks has {len(slot_task)} entries for a batched env of {n} rows")
    if not env.seeded_reset:
        log.warning("%s does not take reset seeds: episodes are not reproducible from their seed",
                    type(env).__name__)
    next_episode = {int(t): 0 for t in np.unique(slot_task)}
    episode_of = np.full(n, -1)
    ret, length, start_at = np.zeros(n), np.zeros(n, dtype=int), np.zeros(n, dtype=int)
    history = _History()
    results: list[EpisodeRecord] = []
    obs: dict[str, np.ndarray] = {}
    reset_fault: dict[int, str] = {}  # row -> reason its reset failed, reported at its next step

    def start(slots: np.ndarray) -> None:
        nonlocal obs
        chosen, seeds = [], []
        for slot in slots:
            t = int(slot_task[slot])
            if next_episode[t] >= episodes_per_task:
                episode_of[slot] = -1
                continue
            episode_of[slot], next_episode[t] = next_episode[t], next_episode[t] + 1
            chosen.append(int(slot))
            seeds.append(seed + int(episode_of[slot]))
        if chosen:
            mask = np.zeros(n, dtype=bool)
            mask[chosen] = True
            obs = obs_to_numpy(env.reset(mask, seeds))
            bad = np.flatnonzero(mask & ~_finite_rows(obs))
            for slot in bad:
                reset_fault[int(slot)] = nonfinite_reason({g: v[slot] for g, v in obs.items()}, on_reset=True)
            if len(bad):  # the policy acts on zeros there; the step that follows ends the episode
                obs = {g: np.where(np.isfinite(v), v, 0).astype(v.dtype) for g, v in obs.items()}
            ret[chosen], length[chosen], start_at[chosen] = 0.0, 0, history.t
        if on_reset is not None and len(slots):
            on_reset(np.isin(np.arange(n), slots))

    start(np.arange(n))
    while (episode_of >= 0).any():
        actions, extras = act(obs)
        actions = np.asarray(actions)
        bad_action = ~np.isfinite(actions.reshape(n, -1)).all(axis=1)
        safe = actions.astype(np.float32, copy=False) if not bad_action.any() else \
            np.where(bad_action.reshape(n, *[1] * (actions.ndim - 1)), 0, actions).astype(np.float32)
        next_obs_t, reward_t, term_t, trunc_t, info = env.step(torch.as_tensor(safe, device=env.device))
        next_obs = obs_to_numpy(next_obs_t)
        reward = reward_t.numpy(force=True).astype(np.float64)
        terminated, truncated = term_t.numpy(force=True).astype(bool), trunc_t.numpy(force=True).astype(bool)
        flagged = bad_action | ~(np.isfinite(reward) & _finite_rows(next_obs))
        flagged[list(reset_fault)] = True
        errors = info.get("episode_error")
        if errors is not None or flagged.any():
            errors = list(errors or [None] * n)
            for slot in np.flatnonzero(flagged):
                errors[slot] = reset_fault.pop(int(slot), None) or (NAN_ACTION if bad_action[slot] else None) \
                    or errors[slot] or nonfinite_reason({g: v[slot] for g, v in next_obs.items()}, reward[slot])
            failed = np.array([e is not None for e in errors])
            reward[failed], terminated[failed], truncated[failed] = 0.0, False, True
            for g, v in next_obs.items():  # keep the last finite observation, as SafeEpisodes does
                v[failed] = obs[g][failed]
        else:
            errors = [None] * n
        success = info.get("is_success")
        success = np.zeros(n, dtype=bool) if success is None else \
            torch.as_tensor(success).numpy(force=True).astype(bool)
        active = episode_of >= 0
        if record:
            keep_from = int(start_at[active].min())
            history.append({**{f"obs/{g}": v for g, v in obs.items()}, "action": actions,
                            "reward": reward.astype(np.float32), "terminated": terminated, "truncated": truncated,
                            **extras}, keep_from)
        ret[active] += reward[active]
        length[active] += 1
        finished = np.flatnonzero(active & (terminated | truncated))
        for slot in finished:
            t, error = slot_task[slot], errors[slot]
            if error is not None and error.startswith(RESET_FAULT):
                length[slot] = 0
            episode = Episode(task_names[t], seed + int(episode_of[slot]), float(ret[slot]), int(length[slot]),
                              bool(success[slot]) and not error, error, None if env_ids is None else env_ids[t])
            if error:
                log.warning("%s (counted as a failed episode)", episode.fault_message())
            steps = history.episode(slot, start_at[slot]) if record else {}
            results.append(EpisodeRecord(episode, int(slot_task[slot]), steps))
        obs = next_obs
        start(finished)
        if on_step is not None:
            on_step(n)
    return sorted(results, key=lambda r: (r.task_index, r.episode.seed))


def _finite_rows(obs: dict[str, np.ndarray]) -> np.ndarray:
    """(n,) True for the rows of ``obs`` {group: (n, dim)} whose every value is finite."""
    finite = np.ones(len(next(iter(obs.values()))), dtype=bool)
    for v in obs.values():
        finite &= np.isfinite(v.reshape(len(v), -1)).all(axis=1)
    return finite


def run_episodes(suite: Suite, task: int | str, policy: Policy, episodes: int, n_envs: int = 8,
                 seed: int = 0, deterministic: bool = True,
                 on_step: Callable[[int], None] | None = None, pool: EnvPool | None = None) -> list[Episode]:
    """Evaluate ``policy`` on ``episodes`` seeded episodes of one task; it is handed only its own groups. Where
    the task defines no success (:attr:`Suite.has_success`), each episode's ``success`` is None. ``pool``: the
    suite's envs to borrow (a run that evaluates every round builds them once)."""
    t = suite.index(task) if isinstance(task, str) else task
    check_policy_fits(policy, suite, t)
    policy.reset(None)
    records = rollout(suite, [t],
                      lambda obs: (np.asarray(policy.act(select_groups(obs, policy.groups), deterministic)), {}),
                      episodes, n_envs=n_envs, seed=seed, on_reset=policy.reset, on_step=on_step, pool=pool)
    defined = suite.has_success[t]
    return [r.episode if defined else dataclasses.replace(r.episode, success=None) for r in records]
