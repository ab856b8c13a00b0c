"""Envs that misbehave on purpose, for the tests of dropped episodes (importable as factories)."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
from gymnasium import spaces


class FaultyEnv(gym.Env):
    """A 1-D env (reward 1 a step) whose episodes fail at step 3 (``fault``: "nan" observation, "nan_reward",
    "raise" an exception) or on reset ("nan_reset"): those reset with an odd seed, and with ``every`` > 0
    also every ``every``-th episode of the instance."""

    metadata = {"render_modes": []}

    def __init__(self, fault: str = "nan", length: int = 5, every: int = 0) -> None:
        self.observation_space = spaces.Box(-np.inf, np.inf, shape=(1,), dtype=np.float32)
        self.action_space = spaces.Box(-1.0, 1.0, shape=(1,), dtype=np.float32)
        self.fault, self.length, self.every = fault, length, every
        self.t, self.bad, self.episodes = 0, False, 0

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self.episodes += 1
        self.t = 0
        self.bad = (seed is not None and seed % 2 == 1) or (self.every > 0 and self.episodes % self.every == 0)
        obs = np.full(1, np.nan if self.bad and self.fault == "nan_reset" else 0.0, dtype=np.float32)
        return obs, {"is_success": False}  # it reports success (see Suite.has_success)

    def step(self, action):
        self.t += 1
        if self.bad and self.t == 3:
            if self.fault == "raise":
                raise RuntimeError("simulator exploded")
            if self.fault == "nan_reward":
                return np.zeros(1, dtype=np.float32), float("nan"), False, False, {}
            if self.fault == "nan":
                return np.full(1, np.nan, dtype=np.float32), 1.0, False, False, {}
        return np.zeros(1, dtype=np.float32), 1.0, False, self.t >= self.length, {"is_success": True}


class BlowUp(gym.Wrapper):
    """Puts NaN into a MuJoCo env's velocities before step ``at`` of the episodes reset with an odd seed,
    as an unstable simulation does (MuJoCo then warns and resets its state)."""

    def __init__(self, env: gym.Env, at: int = 3) -> None:
        super().__init__(env)
        self.at, self.t, self.bad = at, 0, False

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        self.t, self.bad = 0, seed is not None and seed % 2 == 1
        return self.env.reset(seed=seed, options=options)

    def step(self, action):
        self.t += 1
        if self.bad and self.t == self.at:
            self.env.unwrapped.data.qvel[:] = np.nan
        return self.env.step(action)


def unstable_point_reach(at: int = 3, **kwargs) -> gym.Env:
    """The project's MuJoCo PointReach (``kwargs`` as for ``policydistill/PointReach-v0``) behind :class:`BlowUp`."""
    import policydistill_envs  # noqa: F401  (registers the env ids)

    return BlowUp(gym.make("policydistill/PointReach-v0", **kwargs), at)
