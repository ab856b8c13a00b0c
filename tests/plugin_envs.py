"""A module that registers a namespaced gymnasium id when imported, as env plugins do (shimmy registers
``dm_control/...``): ``suite=plugin_envs:plugin/Pendulum-v0`` imports it, then makes the id."""

from __future__ import annotations

import gymnasium as gym
import numpy as np

from policydistill.policy import CallablePolicy

ENV_ID = "plugin/Pendulum-v0"
if ENV_ID not in gym.registry:
    gym.register(ENV_ID, entry_point="gymnasium.envs.classic_control.pendulum:PendulumEnv", max_episode_steps=20)


def damper() -> CallablePolicy:
    """Torque against the pendulum's angular velocity (its third observation)."""
    return CallablePolicy(lambda x: np.clip(-0.5 * x[:, 2:3], -2.0, 2.0), groups=("policy",), batched=True)
