"""The batched tensor path beside :func:`~policydistill.eval.rollout.rollout`: the same seeded episodes,
stepped through one :class:`~policydistill.batched.BatchedEnv` with no Python loop over envs.

Semantics are rollout()'s: row ``i`` runs task ``slot_tasks[i]``; episode ``k`` of a task is reset with
seed ``seed + k`` whatever the number of rows; rows are reset by this loop (never auto-reset), so an
action is always chosen and labelled on an observation of the episode it is executed in; terminated
and truncated stay apart; an episode with a non-finite action, observation or reward (or an
``episode_error`` from the env) is ended, flagged and dropped as :class:`~policydistill.wrappers.SafeEpisodes`
does. Python work is per step and per finished episode, never per env and step.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import numpy as np
import torch

from policydistill.batched.protocol import BatchedEnv, make_batched_env, obs_to_numpy
from policydistill.eval.metrics import Episode
from policydistill.eval.rollout import ActFn, EpisodeRecord
from policydistill.suite import Suite

log = logging.getLogger(__name__)


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


def rollout_batched(suite: Suite, slot_tasks: Sequence[int], act: ActFn, episodes_per_task: int, seed: int = 0,
                    on_reset: Callable[[np.ndarray], None] | None = None, record: bool = False,
                    on_step: Callable[[int], None] | None = None) -> list[EpisodeRecord]:
    """rollout() on the suite's batched env with one row per entry of ``slot_tasks``; it is closed after."""
    env = make_batched_env(suite, slot_tasks)
    try:
        return drive(env, slot_tasks, suite.task_names, act, episodes_per_task, seed, on_reset, record, on_step)
    finally:
        env.close()


def drive(env: BatchedEnv, slot_tasks: Sequence[int], task_names: Sequence[str], act: ActFn, episodes_per_task: int,
          seed: int = 0, on_reset: Callable[[np.ndarray], None] | None = None, record: bool = False,
          on_step: Callable[[int], None] | None = None) -> list[EpisodeRecord]:
    """Run ``episodes_per_task`` episodes of each task of ``slot_tasks`` on ``env`` (row ``i`` runs task
    ``slot_tasks[i]``, a suite task index naming ``task_names``); see rollout() for the arguments."""
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
            ret[chosen], length[chosen], start_at[chosen] = 0.0, 0, history.t
        if on_reset is not None and len(slots):
            on_reset(np.isin(np.arange(n), slots))

    start(np.arange(n))
    while (episode_of >= 0).any():
        actions, extras = act(obs)
        actions = np.asarray(actions)
        bad_action = ~np.isfinite(actions.reshape(n, -1)).all(axis=1)
        safe = np.where(bad_action.reshape(n, *[1] * (actions.ndim - 1)), 0, actions).astype(np.float32)
        next_obs_t, reward_t, term_t, trunc_t, info = env.step(torch.as_tensor(safe, device=env.device))
        next_obs = obs_to_numpy(next_obs_t)
        reward = reward_t.detach().cpu().numpy().astype(np.float64)
        terminated = term_t.detach().cpu().numpy().astype(bool)
        truncated = trunc_t.detach().cpu().numpy().astype(bool)
        errors = list(info.get("episode_error") or [None] * n)
        finite = np.isfinite(reward) & np.all([np.isfinite(v).all(axis=1) for v in next_obs.values()], axis=0)
        for slot in np.flatnonzero(bad_action | ~finite):
            errors[slot] = "policy returned a non-finite action" if bad_action[slot] else \
                "env returned a non-finite observation or reward"
        failed = np.array([e is not None for e in errors])
        reward[failed], terminated[failed], truncated[failed] = 0.0, False, True
        for g, v in next_obs.items():  # keep the last finite observation, as SafeEpisodes does
            v[failed] = obs[g][failed]
        success = info.get("is_success")
        success = np.zeros(n, dtype=bool) if success is None else np.asarray(torch.as_tensor(success).cpu(), bool)
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
            name, error = task_names[slot_task[slot]], errors[slot]
            if error:
                log.warning("task %s: episode with seed %d dropped: %s", name, seed + episode_of[slot], error)
            episode = Episode(name, seed + int(episode_of[slot]), float(ret[slot]), int(length[slot]),
                              bool(success[slot]) and not error, error)
            steps = history.episode(slot, start_at[slot]) if record else {}
            results.append(EpisodeRecord(episode, int(slot_task[slot]), steps))
        obs = next_obs
        start(finished)
        if on_step is not None:
            on_step(n)
    return sorted(results, key=lambda r: (r.task_index, r.episode.seed))
