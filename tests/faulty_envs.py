"""Envs that misbehave on purpose, for the tests of dropped episodes (importable as a factory)."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
from gymnasium import spaces


class FaultyEnv(gym.Env):
    """A 1-D env whose episodes fail at step 3 (NaN observation or an exception): those reset with an
    odd seed, and with ``every`` > 0 also every ``every``-th episode of the instance."""

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
        return np.zeros(1, dtype=np.float32), {}

    def step(self, action):
        self.t += 1
        if self.bad and self.t == 3:
            if self.fault == "raise":
                raise RuntimeError("simulator exploded")
            return np.full(1, np.nan, dtype=np.float32), 1.0, False, False, {}
        return np.zeros(1, dtype=np.float32), 1.0, False, self.t >= self.length, {"is_success": True}
