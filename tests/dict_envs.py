"""Envs observing a Dict whose keys are not group names, as dm_control through shimmy does (importable as
factories): a point mass whose position, velocity and goal come as separate keys."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from policydistill.policy import CallablePolicy


class DictPointEnv(gym.Env):
    """A 2-D point mass driven toward a goal drawn per episode; observes ``{"position": (2,), "velocity": (2,),
    "goal": (2,), "height": ()}`` (``height`` a constant scalar). Reward: minus the distance to the goal;
    success within 0.1 of it; 50 steps. ``extra``: ``"nested"`` adds a nested Dict key, ``"discrete"`` a
    Discrete one."""

    metadata = {"render_modes": []}

    def __init__(self, extra: str | None = None) -> None:
        box = spaces.Box(-np.inf, np.inf, shape=(2,), dtype=np.float64)
        keys: dict[str, spaces.Space] = {"position": box, "velocity": box, "goal": box,
                                         "height": spaces.Box(-np.inf, np.inf, shape=(), dtype=np.float64)}
        if extra == "nested":
            keys["sensors"] = spaces.Dict({"touch": box})
        elif extra == "discrete":
            keys["mode"] = spaces.Discrete(3)
        self.observation_space = spaces.Dict(keys)
        self.action_space = spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32)
        self.pos = self.vel = self.goal = np.zeros(2)
        self.t = 0

    def _obs(self) -> dict[str, np.ndarray]:
        return {"position": self.pos.copy(), "velocity": self.vel.copy(), "goal": self.goal.copy(),
                "height": np.array(0.5)}

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self.pos, self.vel, self.t = np.zeros(2), np.zeros(2), 0
        self.goal = self.np_random.uniform(-1.0, 1.0, size=2)
        return self._obs(), {"is_success": False}

    def step(self, action):
        self.vel = 0.8 * self.vel + 0.1 * np.clip(np.asarray(action, dtype=np.float64), -1, 1)
        self.pos = self.pos + self.vel
        self.t += 1
        dist = float(np.linalg.norm(self.goal - self.pos))
        return self._obs(), -dist, False, self.t >= 50, {"is_success": dist < 0.1}


def seeker() -> CallablePolicy:
    """PD toward the goal, reading ``policy`` = [position, velocity, height] and ``privileged`` = [goal] (the
    mapping of ``tests/test_dict_observations.py``)."""

    def act(x: np.ndarray) -> np.ndarray:
        pos, vel, goal = x[:, 0:2], x[:, 2:4], x[:, 5:7]
        return np.clip(4.0 * (goal - pos) - 3.0 * vel, -1, 1)

    return CallablePolicy(act, groups=("policy", "privileged"), batched=True)


class GoalPointEnv(DictPointEnv):
    """The point mass in gymnasium-robotics' goal-env layout: ``{"observation": [position, velocity, 0 x extra]
    (4 + extra,), "achieved_goal": position (2,), "desired_goal": goal (2,)}``, success in ``info["is_success"]``."""

    def __init__(self, extra: int = 0) -> None:
        super().__init__()
        box = spaces.Box(-np.inf, np.inf, shape=(2,), dtype=np.float64)
        self.extra = np.zeros(extra)
        self.observation_space = spaces.Dict({
            "observation": spaces.Box(-np.inf, np.inf, shape=(4 + extra,), dtype=np.float64),
            "achieved_goal": box, "desired_goal": box})

    def _obs(self) -> dict[str, np.ndarray]:
        return {"observation": np.concatenate([self.pos, self.vel, self.extra]), "achieved_goal": self.pos.copy(),
                "desired_goal": self.goal.copy()}


def goal_seeker() -> CallablePolicy:
    """PD toward the goal, reading ``policy`` = [position, velocity] and ``goal`` (the default mapping)."""

    def act(x: np.ndarray) -> np.ndarray:
        pos, vel, goal = x[:, 0:2], x[:, 2:4], x[:, -2:]
        return np.clip(4.0 * (goal - pos) - 3.0 * vel, -1, 1)

    return CallablePolicy(act, groups=("policy", "goal"), batched=True)
