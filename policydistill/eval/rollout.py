"""Vectorised, seeded evaluation rollouts.

Episode ``k`` of a run always uses reset seed ``seed + k``, whatever the number of envs, so two
policies evaluated with the same seed face the same episodes. An env that raises or returns a
non-finite observation or reward mid-episode has that episode flagged and dropped (the suite's
``SafeEpisodes`` wrapper ends it) and the run goes on; the reason is kept in the result.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np

from policydistill.eval.metrics import Episode
from policydistill.policy import Policy
from policydistill.suite import Suite
from policydistill.types import stack_obs

log = logging.getLogger(__name__)


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


def run_episodes(suite: Suite, task: int | str, policy: Policy, episodes: int, n_envs: int = 8,
                 seed: int = 0, deterministic: bool = True,
                 on_step: Callable[[int], None] | None = None) -> list[Episode]:
    """Run ``episodes`` episodes of one task with ``min(n_envs, episodes)`` envs stepped in lockstep.

    The policy is called once per step on the whole batch ``{group: (n_envs, dim)}``; envs that have
    finished their share keep their last observation and their actions are ignored.
    """
    if episodes < 1:
        raise ValueError(f"episodes must be >= 1, got {episodes}")
    t = suite.index(task) if isinstance(task, str) else task
    name = suite.tasks[t].name
    check_policy_fits(policy, suite, t)
    n = min(n_envs, episodes)
    envs = [suite.make_env(t) for _ in range(n)]
    obs: list[dict[str, np.ndarray]] = [{}] * n
    episode_of = [-1] * n
    ret, length = np.zeros(n), np.zeros(n, dtype=int)
    results: list[Episode] = []
    next_episode = 0

    def start(slot: int) -> None:
        nonlocal next_episode
        if next_episode >= episodes:
            episode_of[slot] = -1
            return
        episode_of[slot], next_episode = next_episode, next_episode + 1
        obs[slot], _ = envs[slot].reset(seed=seed + episode_of[slot])
        ret[slot], length[slot] = 0.0, 0
        mask = np.zeros(n, dtype=bool)
        mask[slot] = True
        policy.reset(mask)

    policy.reset(None)
    for slot in range(n):
        start(slot)
    try:
        while any(e >= 0 for e in episode_of):
            actions = np.asarray(policy.act(stack_obs(obs), deterministic=deterministic))
            for slot in range(n):
                if episode_of[slot] < 0:
                    continue
                o, r, terminated, truncated, info = envs[slot].step(actions[slot])
                obs[slot] = o
                ret[slot] += r
                length[slot] += 1
                error = info.get("episode_error")
                if error:
                    log.warning("task %s: episode with seed %d dropped: %s", name, seed + episode_of[slot], error)
                if terminated or truncated:
                    results.append(Episode(name, seed + episode_of[slot], float(ret[slot]), int(length[slot]),
                                           bool(info.get("is_success", False)) and not error, error))
                    start(slot)
            if on_step is not None:
                on_step(n)
    finally:
        for env in envs:
            env.close()
    return sorted(results, key=lambda e: e.seed)
