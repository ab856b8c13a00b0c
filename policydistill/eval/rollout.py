"""Vectorised, seeded rollouts: the one stepping loop behind evaluation and data collection.

Envs are stepped in lockstep; the acting function is called once per step on the whole batch
``{group: (n_envs, dim)}``. Each env slot runs episodes of one task; episode ``k`` of a task always
uses reset seed ``seed + k``, whatever the number of envs, so two policies evaluated with the same
seed face the same episodes. Envs are reset by this loop, never auto-reset: the observation an
action is chosen on (and labelled on) always belongs to the episode the action is executed in.

An env that raises or returns a non-finite observation or reward mid-episode has that episode
flagged (the suite's ``SafeEpisodes`` wrapper ends it) and the run goes on.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from policydistill.eval.metrics import Episode
from policydistill.policy import Policy
from policydistill.suite import Suite
from policydistill.types import select_groups, stack_obs

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
    from policydistill.spaces import check_spaces

    env = suite.make_env(task)
    try:
        check_spaces(obs_space, act_space, env.observation_space, env.action_space,
                     f"policy on task '{suite.tasks[task].name}' of suite '{suite.name}'")
    finally:
        env.close()


class EnvPool:
    """Envs of a suite kept open across rollouts (a rollout borrows them and gives them back): building
    a MuJoCo env costs about as much as a hundred steps. ``close()`` closes them."""

    def __init__(self, suite: Suite) -> None:
        self.suite, self.free = suite, {}

    def take(self, task: int):
        free = self.free.get(task)
        return free.pop() if free else self.suite.make_env(task)

    def give(self, task: int, env) -> None:
        self.free.setdefault(task, []).append(env)

    def close(self) -> None:
        for envs in self.free.values():
            for env in envs:
                env.close()
        self.free.clear()


def slot_layout(tasks: Sequence[int], episodes_per_task: int, n_envs: int) -> list[int]:
    """The task of each env slot: at least one slot per task, slot ``i`` runs ``tasks[i % len(tasks)]``."""
    if episodes_per_task < 1 or not tasks:
        raise ValueError(f"need at least one task and episode, got tasks={list(tasks)}, "
                         f"episodes_per_task={episodes_per_task}")
    n = max(len(tasks), min(n_envs, episodes_per_task * len(tasks)))
    return [tasks[i % len(tasks)] for i in range(n)]


def rollout(suite: Suite, tasks: Sequence[int], act: ActFn, episodes_per_task: int, n_envs: int = 8,
            seed: int = 0, on_reset: Callable[[np.ndarray], None] | None = None, record: bool = False,
            on_step: Callable[[int], None] | None = None, pool: EnvPool | None = None) -> list[EpisodeRecord]:
    """Run ``episodes_per_task`` episodes of each task in ``tasks`` on ``n_envs`` envs (at least one per
    task; slot ``i`` runs task ``tasks[i % len(tasks)]``). ``on_reset(mask (n_envs,))`` is called when
    slots start a new episode (for stateful policies). Envs come from ``pool`` when given (and go back to
    it), else are built and closed here. Returns the finished episodes, dropped ones flagged with their
    ``error``, sorted by task then seed. A suite with a ``batched`` env is stepped through it
    (:func:`~policydistill.eval.batched_rollout.rollout_batched`), with the same episodes."""
    slot_task = slot_layout(tasks, episodes_per_task, n_envs)
    if suite.batched is not None:  # one batched tensor env instead of a Python loop over envs
        from policydistill.eval.batched_rollout import rollout_batched

        return rollout_batched(suite, slot_task, act, episodes_per_task, seed, on_reset, record, on_step)
    n = len(slot_task)
    envs = [pool.take(t) if pool is not None else suite.make_env(t) for t in slot_task]
    next_episode = dict.fromkeys(tasks, 0)
    obs: list[dict[str, np.ndarray]] = [{}] * n
    episode_of = [-1] * n
    buffers: list[list[dict[str, np.ndarray]]] = [[] for _ in range(n)]
    ret, length = np.zeros(n), np.zeros(n, dtype=int)
    results: list[EpisodeRecord] = []

    def start(slots: list[int]) -> None:
        for slot in slots:
            t = slot_task[slot]
            if next_episode[t] >= episodes_per_task:
                episode_of[slot] = -1
                continue
            episode_of[slot], next_episode[t] = next_episode[t], next_episode[t] + 1
            obs[slot], _ = envs[slot].reset(seed=seed + episode_of[slot])
            ret[slot], length[slot], buffers[slot] = 0.0, 0, []
        if on_reset is not None and slots:
            on_reset(np.isin(np.arange(n), slots))

    start(list(range(n)))
    try:
        while any(e >= 0 for e in episode_of):
            batch = stack_obs(obs)
            actions, extras = act(batch)
            finished = []
            for slot in range(n):
                if episode_of[slot] < 0:
                    continue
                o, r, terminated, truncated, info = envs[slot].step(actions[slot])
                if record:
                    buffers[slot].append({**{f"obs/{g}": v[slot] for g, v in batch.items()},
                                          "action": actions[slot], "reward": np.float32(r),
                                          "terminated": bool(terminated), "truncated": bool(truncated),
                                          **{k: v[slot] for k, v in extras.items()}})
                obs[slot] = o
                ret[slot] += r
                length[slot] += 1
                error = info.get("episode_error")
                if not (terminated or truncated):
                    continue
                name = suite.tasks[slot_task[slot]].name
                if error:
                    log.warning("task %s: episode with seed %d dropped: %s", name, seed + episode_of[slot], error)
                episode = Episode(name, seed + episode_of[slot], float(ret[slot]), int(length[slot]),
                                  bool(info.get("is_success", False)) and not error, error)
                steps = {k: np.stack([s[k] for s in buffers[slot]]) for k in buffers[slot][0]} if record else {}
                results.append(EpisodeRecord(episode, slot_task[slot], steps))
                finished.append(slot)
            start(finished)
            if on_step is not None:
                on_step(n)
    finally:
        for t, env in zip(slot_task, envs, strict=True):
            if pool is not None:
                pool.give(t, env)
            else:
                env.close()
    return sorted(results, key=lambda r: (r.task_index, r.episode.seed))


def run_episodes(suite: Suite, task: int | str, policy: Policy, episodes: int, n_envs: int = 8,
                 seed: int = 0, deterministic: bool = True,
                 on_step: Callable[[int], None] | None = None) -> list[Episode]:
    """Evaluate ``policy`` on ``episodes`` seeded episodes of one task; it is handed only its own groups."""
    t = suite.index(task) if isinstance(task, str) else task
    check_policy_fits(policy, suite, t)
    policy.reset(None)
    records = rollout(suite, [t],
                      lambda obs: (np.asarray(policy.act(select_groups(obs, policy.groups), deterministic)), {}),
                      episodes, n_envs=n_envs, seed=seed, on_reset=policy.reset, on_step=on_step)
    return [r.episode for r in records]
