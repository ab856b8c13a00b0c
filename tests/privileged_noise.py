"""PointReach with its ``privileged`` group replaced by seeded noise (importable as a suite env factory).

Everything else (dynamics, ``policy`` group, rewards) is the real env's, so a student that never
receives ``privileged`` trains and acts exactly alike on this env and on the real one.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np


class NoisyPrivileged(gym.ObservationWrapper):
    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        self.rng = np.random.default_rng(0)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        self.rng = np.random.default_rng(None if seed is None else seed + 12345)
        return super().reset(seed=seed, options=options)

    def observation(self, obs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        noise = self.rng.normal(0.0, 50.0, size=obs["privileged"].shape).astype(np.float32)
        return {**obs, "privileged": noise}


def make_env(**kwargs) -> gym.Env:
    return NoisyPrivileged(gym.make("policydistill/PointReach-v0", **kwargs))
