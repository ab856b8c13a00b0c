"""Wrappers that give every env the observation groups of the architecture."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from policydistill.keymap import make_keymap
from policydistill.types import GOAL, GROUPS, POLICY, PRIVILEGED, TASK, all_finite, check_groups


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
            out[PRIVILEGED] = np.concatenate([self._data.qpos, self._data.qvel], dtype=np.float32)
        return out


ENV_GROUPS = tuple(g for g in GROUPS if g != TASK)
"""The groups an env may yield itself (``task`` is added by :class:`TaskGroup`)."""


def reads_groups_as_is(space: spaces.Space) -> bool:
    """Whether a Dict observation space already holds only observation groups (then no mapping applies)."""
    return isinstance(space, spaces.Dict) and set(space.spaces) <= set(ENV_GROUPS)


GOAL_KEYS = {"desired_goal": GOAL, "achieved_goal": PRIVILEGED}
"""Where a goal env's keys go unless a suite assigns them (gymnasium-robotics' GoalEnv layout)."""


class DictToGroups(gym.ObservationWrapper, gym.utils.RecordConstructorArgs):
    """Map a Dict observation whose keys are not group names to observation groups.

    ``assign`` ({group: [key, ...]}) puts those keys into those groups, in the order given. A goal env's
    keys not assigned go as gymnasium-robotics lays them out: ``desired_goal`` into ``goal`` (what the
    student reads like ``task``), ``achieved_goal`` into ``privileged``; every other key not assigned goes
    into ``policy``, in sorted key order. Each key's value is flattened (a Box of any shape); a nested Dict
    or a non-Box key is an error naming the key. :attr:`group_keys` records the mapping (group -> keys in
    concatenation order), :attr:`keymap` the same with each key's shape (see :mod:`policydistill.keymap`).
    """

    def __init__(self, env: gym.Env, assign: dict[str, list[str]] | None = None, where: str = "env") -> None:
        gym.utils.RecordConstructorArgs.__init__(self, assign=assign, where=where)
        gym.ObservationWrapper.__init__(self, env)
        space = env.observation_space
        if not isinstance(space, spaces.Dict):
            raise ValueError(f"{where}: 'groups' assigns keys of a Dict observation, but the env observes a "
                             f"{type(space).__name__}")
        for key, sub in space.spaces.items():
            if isinstance(sub, spaces.Dict):
                raise ValueError(f"{where}: observation key '{key}' is a nested Dict; only one level of keys maps "
                                 "to groups")
            if not isinstance(sub, spaces.Box):
                raise ValueError(f"{where}: observation key '{key}' is a {type(sub).__name__}; groups hold Box "
                                 "values")
        assign = {g: list(keys) for g, keys in (assign or {}).items()}
        bad = sorted(set(assign) - set(ENV_GROUPS))
        if bad:
            raise ValueError(f"{where}: 'groups' names {bad}; an env's keys go to {list(ENV_GROUPS)}")
        listed = [k for keys in assign.values() for k in keys]
        unknown = sorted(set(listed) - set(space.spaces))
        if unknown or len(set(listed)) != len(listed):
            raise ValueError(f"{where}: 'groups' lists {unknown or 'a key twice'}; the observation's keys are "
                             f"{sorted(space.spaces)}, each in one group")
        for key, group in GOAL_KEYS.items():
            if key in space.spaces and key not in listed:
                assign[group] = [*assign.get(group, []), key]
                listed.append(key)
        rest = sorted(set(space.spaces) - set(listed))
        assign[POLICY] = [*assign.get(POLICY, []), *rest]
        self.group_keys = {g: keys for g, keys in assign.items() if keys}
        self.keymap = make_keymap({k: space[k].shape for k in space.spaces}, self.group_keys)
        boxes = {}
        for group, keys in self.group_keys.items():
            low = np.concatenate([np.asarray(space[k].low, np.float32).reshape(-1) for k in keys])
            high = np.concatenate([np.asarray(space[k].high, np.float32).reshape(-1) for k in keys])
            boxes[group] = spaces.Box(low, high, dtype=np.float32)
        self.observation_space = spaces.Dict(boxes)

    def observation(self, observation: dict[str, Any]) -> dict[str, np.ndarray]:
        return {group: np.concatenate([np.asarray(observation[k], np.float32).reshape(-1) for k in keys])
                for group, keys in self.group_keys.items()}


class Success(gym.Wrapper):
    """Sets ``info["is_success"]`` on every step from ``test(info, episode return so far)``, as a task's
    ``success`` spec says (:func:`~policydistill.suites.suite.success_test`)."""

    def __init__(self, env: gym.Env, test: Callable[[dict[str, Any], float], bool]) -> None:
        super().__init__(env)
        self.test, self.ret = test, 0.0

    def reset(self, **kwargs: Any) -> tuple[Any, dict[str, Any]]:
        self.ret = 0.0
        return self.env.reset(**kwargs)

    def step(self, action: Any) -> tuple[Any, Any, bool, bool, dict[str, Any]]:
        obs, reward, terminated, truncated, info = self.env.step(action)
        self.ret += float(reward)
        return obs, reward, terminated, truncated, {**info, "is_success": bool(self.test(info, self.ret))}


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


# The reasons an episode is ended by a fault, by their start, and the kind each is counted as.
NAN_ACTION = "policy returned a non-finite action"
RESET_FAULT = "reset returned a non-finite observation"
FAULT_KINDS = (
    (NAN_ACTION, "nan_action"),
    (RESET_FAULT, "nan_observation"),
    ("env returned a non-finite observation", "nan_observation"),
    ("simulator state became non-finite", "nan_observation"),
    ("env returned a non-finite reward", "nan_reward"),
    ("env raised ", "env_exception"),
)


def fault_kind(reason: str) -> str:
    """The kind of a fault reason: ``nan_action``, ``nan_observation``, ``nan_reward`` or ``env_exception``
    (also for any other reason an env reports)."""
    return next((kind for start, kind in FAULT_KINDS if reason.startswith(start)), "env_exception")


def nonfinite_reason(obs, reward: float = 0.0, on_reset: bool = False) -> str | None:
    """Why an observation (an array or ``{group: array}``) and reward cannot be used, None when all are
    finite; a non-finite observation is named before a non-finite reward."""
    groups = obs if isinstance(obs, dict) else {"": obs}
    if all(all_finite(np.asarray(v)) for v in groups.values()) and math.isfinite(reward):
        return None  # the per-step path: a Python sum per group, the exact checks below only when it fails
    bad = [g for g, v in groups.items() if not np.all(np.isfinite(v))]
    if bad:
        where = f" in groups {bad}" if isinstance(obs, dict) else ""
        return (RESET_FAULT if on_reset else "env returned a non-finite observation") + where
    if not np.isfinite(reward):
        return f"env returned a non-finite reward ({reward})"
    return None


class SafeEpisodes(gym.Wrapper, gym.utils.RecordConstructorArgs):
    """End an episode that raises or produces non-finite values instead of passing them on.

    Such a step returns the last finite observation, reward 0, ``truncated=True`` and
    ``info["episode_error"]`` with the reason (see :data:`FAULT_KINDS`), so nothing non-finite reaches a
    learner or a dataset and the caller can drop the episode. A MuJoCo env whose state went non-finite
    (MuJoCo then resets it and warns) counts as such a step. A reset with a non-finite observation returns
    it with zeros in place of the non-finite values, and the next step ends the episode with the reason,
    without stepping the env. ``dropped`` counts these episodes.
    """

    def __init__(self, env: gym.Env) -> None:
        gym.utils.RecordConstructorArgs.__init__(self)
        gym.Wrapper.__init__(self, env)
        self.last_obs = None
        self.dropped = 0
        self.pending: str | None = None  # a reset fault, reported by the next step
        self._sim_warnings = _mujoco_instability(env.unwrapped)
        self._warned: tuple[int, ...] | None = None  # the instability warnings counted so far, per kind

    def reset(self, **kwargs):
        obs, info = self.env.reset(**kwargs)
        if self._sim_warnings is not None:
            self._warned = self._sim_warnings()
        self.pending = nonfinite_reason(obs, on_reset=True)
        if self.pending is not None:
            obs = _zero_nonfinite(obs)
        self.last_obs = obs
        return obs, info

    def step(self, action):
        if self.pending is not None:
            reason, self.pending = self.pending, None
            return self._drop(reason)
        if not all_finite(np.asarray(action)) and not np.all(np.isfinite(action)):
            return self._drop(NAN_ACTION)
        before = self._warned
        try:
            obs, reward, terminated, truncated, info = self.env.step(action)
        except Exception as e:  # an env crash costs one episode, not the run
            return self._drop(f"env raised {type(e).__name__}: {e}")
        reason = nonfinite_reason(obs, reward)
        if self._sim_warnings is not None:
            self._warned = self._sim_warnings()
            if reason is None and before is not None and self._warned != before:
                reason = _unstable_reason(before, self._warned)
        if reason is not None:
            return self._drop(reason)
        self.last_obs = obs
        return obs, reward, terminated, truncated, info

    def _drop(self, reason: str):
        self.dropped += 1
        return self.last_obs, 0.0, False, True, {"episode_error": reason}


_UNSTABLE = ("QPOS", "QVEL", "QACC")  # MuJoCo's "Nan, Inf or huge value in ..." warnings


def _mujoco_instability(env: gym.Env):
    """For a MuJoCo env, a function giving its counts of the ``_UNSTABLE`` warnings (a tuple); else None."""
    if not hasattr(getattr(env, "data", None), "warning"):
        return None
    import mujoco

    ids = [int(getattr(mujoco.mjtWarning, f"mjWARN_BAD{name}")) for name in _UNSTABLE]
    warning = env.data.warning
    return lambda: tuple(warning[i].number for i in ids)


def _unstable_reason(before: tuple[int, ...], after: tuple[int, ...]) -> str:
    """The reason for the MuJoCo warnings raised during a step (counts before and after it)."""
    names = [name for name, b, a in zip(_UNSTABLE, before, after, strict=True) if a > b]
    return (f"simulator state became non-finite (MuJoCo: Nan, Inf or huge value in {', '.join(names)}; "
            "it reset the state)")


def _zero_nonfinite(obs):
    """``obs`` (an array or ``{group: array}``) with zeros in place of its non-finite values."""
    if isinstance(obs, dict):
        return {g: _zero_nonfinite(v) for g, v in obs.items()}
    return np.where(np.isfinite(obs), obs, 0).astype(np.asarray(obs).dtype)
