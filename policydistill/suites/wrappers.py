"""Wrappers that give every env the observation groups of the architecture."""

from __future__ import annotations

from collections.abc import Sequence

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from policydistill.types import POLICY, PRIVILEGED, TASK, check_groups


def _box(dim: int) -> spaces.Box:
    return spaces.Box(-np.inf, np.inf, shape=(dim,), dtype=np.float32)


class BoxToGroups(gym.ObservationWrapper, gym.utils.RecordConstructorArgs):
    """Adapt a plain Box-observation env to ``{policy: obs}``.

    For a MuJoCo env, the full simulator state ``[qpos, qvel]`` becomes the ``privileged`` group.
    """

    def __init__(self, env: gym.Env) -> None:
        gym.utils.RecordConstructorArgs.__init__(self)
        gym.ObservationWrapper.__init__(self, env)
        if not isinstance(env.observation_space, spaces.Box):
            raise ValueError(f"cannot adapt observation space {env.observation_space} to groups: "
                             "expected a Box or a Dict of observation groups")
        self._data = getattr(env.unwrapped, "data", None)
        groups = {POLICY: spaces.Box(env.observation_space.low.reshape(-1).astype(np.float32),
                                     env.observation_space.high.reshape(-1).astype(np.float32))}
        if self._data is not None:
            groups[PRIVILEGED] = _box(self._data.qpos.size + self._data.qvel.size)
        self.observation_space = spaces.Dict(groups)

    def observation(self, observation: np.ndarray) -> dict[str, np.ndarray]:
        out = {POLICY: np.asarray(observation, dtype=np.float32).reshape(-1)}
        if self._data is not None:
            out[PRIVILEGED] = np.concatenate([self._data.qpos, self._data.qvel]).astype(np.float32)
        return out


class TaskGroup(gym.ObservationWrapper, gym.utils.RecordConstructorArgs):
    """Add the ``task`` group: a one-hot (n_tasks,) of this env's task index in its suite."""

    def __init__(self, env: gym.Env, task_index: int, n_tasks: int) -> None:
        gym.utils.RecordConstructorArgs.__init__(self, task_index=task_index, n_tasks=n_tasks)
        gym.ObservationWrapper.__init__(self, env)
        if not isinstance(env.observation_space, spaces.Dict):
            raise ValueError(f"TaskGroup needs a Dict observation space, got {env.observation_space}")
        self.one_hot = np.zeros(n_tasks, dtype=np.float32)
        self.one_hot[task_index] = 1.0
        self.observation_space = spaces.Dict(
            {**env.observation_space.spaces, TASK: spaces.Box(0.0, 1.0, shape=(n_tasks,), dtype=np.float32)})

    def observation(self, observation: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {**observation, TASK: self.one_hot.copy()}


class FlattenGroups(gym.ObservationWrapper, gym.utils.RecordConstructorArgs):
    """Concatenate the chosen groups, in order, into one Box (what SB3's MlpPolicy reads)."""

    def __init__(self, env: gym.Env, groups: Sequence[str]) -> None:
        gym.utils.RecordConstructorArgs.__init__(self, groups=tuple(groups))
        gym.ObservationWrapper.__init__(self, env)
        self.groups = check_groups(groups)
        missing = [g for g in self.groups if g not in env.observation_space.spaces]
        if missing:
            raise ValueError(f"env has no observation groups {missing}; it has {list(env.observation_space)}")
        parts = [env.observation_space[g] for g in self.groups]
        self.observation_space = spaces.Box(np.concatenate([p.low.reshape(-1) for p in parts]),
                                            np.concatenate([p.high.reshape(-1) for p in parts]),
                                            dtype=np.float32)

    def observation(self, observation: dict[str, np.ndarray]) -> np.ndarray:
        return np.concatenate([np.asarray(observation[g], dtype=np.float32).reshape(-1) for g in self.groups])


class SafeEpisodes(gym.Wrapper, gym.utils.RecordConstructorArgs):
    """End an episode that raises or produces non-finite values instead of passing them on.

    Such a step returns the last finite observation, reward 0, ``truncated=True`` and
    ``info["episode_error"]`` with the reason, so nothing non-finite reaches a learner or a dataset
    and the caller can drop the episode. ``dropped`` counts them.
    """

    def __init__(self, env: gym.Env) -> None:
        gym.utils.RecordConstructorArgs.__init__(self)
        gym.Wrapper.__init__(self, env)
        self.last_obs = None
        self.dropped = 0

    def reset(self, **kwargs):
        obs, info = self.env.reset(**kwargs)
        if not _all_finite(obs):
            raise ValueError(f"{self.env} returned a non-finite observation on reset")
        self.last_obs = obs
        return obs, info

    def step(self, action):
        if not np.all(np.isfinite(action)):
            return self._drop("policy returned a non-finite action")
        try:
            obs, reward, terminated, truncated, info = self.env.step(action)
        except Exception as e:  # an env crash costs one episode, not the run
            return self._drop(f"env raised {type(e).__name__}: {e}")
        if not (_all_finite(obs) and np.isfinite(reward)):
            return self._drop("env returned a non-finite observation or reward")
        self.last_obs = obs
        return obs, reward, terminated, truncated, info

    def _drop(self, reason: str):
        self.dropped += 1
        return self.last_obs, 0.0, False, True, {"episode_error": reason}


def _all_finite(obs) -> bool:
    values = obs.values() if isinstance(obs, dict) else [obs]
    return all(np.all(np.isfinite(v)) for v in values)
