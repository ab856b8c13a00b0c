"""Envs that misbehave on purpose, for the tests of dropped episodes (importable as a factory)."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
from gymnasium import spaces


class FaultyEnv(gym.Env):
    """A 1-D env whose episodes with odd seeds fail at step 3: NaN observation or an exception."""

    metadata = {"render_modes": []}

    def __init__(self, fault: str = "nan", length: int = 5) -> None:
        self.observation_space = spaces.Box(-np.inf, np.inf, shape=(1,), dtype=np.float32)
        self.action_space = spaces.Box(-1.0, 1.0, shape=(1,), dtype=np.float32)
        self.fault, self.length = fault, length
        self.t, self.bad = 0, False

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self.t, self.bad = 0, seed is not None and seed % 2 == 1
        return np.zeros(1, dtype=np.float32), {}

    def step(self, action):
        self.t += 1
        if self.bad and self.t == 3:
            if self.fault == "raise":
                raise RuntimeError("simulator exploded")
            return np.full(1, np.nan, dtype=np.float32), 1.0, False, False, {}
        return np.zeros(1, dtype=np.float32), 1.0, False, self.t >= self.length, {"is_success": True}
