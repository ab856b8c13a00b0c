"""CheetahSpeed: HalfCheetah tracking a commanded forward speed under randomised dynamics."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import mujoco
import numpy as np
from gymnasium import spaces
from gymnasium.envs.mujoco.half_cheetah_v5 import HalfCheetahEnv

Range = tuple[float, float]
log = logging.getLogger(__name__)


def _check_range(name: str, bounds: Range) -> Range:
    low, high = float(bounds[0]), float(bounds[1])
    if not 0.0 < low <= high:
        raise ValueError(f"{name} must satisfy 0 < low <= high, got {bounds!r}")
    return low, high


@contextmanager
def mujoco_warnings_to_debug_log() -> Iterator[None]:
    """MuJoCo's warnings go to this module's debug log while in the block (gymnasium's half_cheetah.xml sets the
    deprecated ``settotalmass``, and its warning would otherwise be printed for every env); the previous
    handler is restored after."""
    previous = mujoco.get_mju_user_warning()
    mujoco.set_mju_user_warning(lambda message: log.debug("MuJoCo: %s", message))
    try:
        yield
    finally:
        mujoco.set_mju_user_warning(previous)


class CheetahSpeedEnv(HalfCheetahEnv):
    """HalfCheetah rewarded for running at ``target_speed`` m/s (negative means backwards).

    Each reset draws, from ``self.np_random``, a scale for all body masses and inertias, for the sliding
    friction of every geom (contact friction is the max over the pair, so the floor alone would not do)
    and for every actuator gear; each is applied to the nominal model values, never compounded.

    Observation groups: ``policy`` = qpos[1:] and the pitch rate qvel[2] (9,), i.e. onboard sensing: joint
    encoders (angles), base height and pitch, and a gyro; no velocity of the base or the joints is sensed,
    so a policy reading only ``policy`` must estimate them from its history. ``privileged`` =
    [mass_scale, friction_scale, strength_scale, vx, vz, joint velocities qvel[3:]] (11,): the episode's
    dynamics and the true velocities. Reward per step:
    ``1 - |vx - target| / max(1, |target|) - ctrl_cost_weight * |a|^2`` with vx the mean forward speed
    over the step. ``info["is_success"]``: the mean speed error over the steps after
    the first ``warmup_steps`` is below ``success_tolerance * max(1, |target|)`` (false before that).
    """

    def __init__(
        self,
        target_speed: float = 1.0,
        mass_range: Range = (0.7, 1.3),
        friction_range: Range = (0.6, 1.4),
        strength_range: Range = (0.7, 1.3),
        ctrl_cost_weight: float = 0.05,
        warmup_steps: int = 20,
        success_tolerance: float = 0.25,
        reset_noise_scale: float = 0.1,
        render_mode: str | None = None,
        width: int = 160,
        height: int = 120,
    ) -> None:
        self.target_speed = float(target_speed)
        self.speed_scale = max(1.0, abs(self.target_speed))
        self.mass_range = _check_range("mass_range", mass_range)
        self.friction_range = _check_range("friction_range", friction_range)
        self.strength_range = _check_range("strength_range", strength_range)
        self.warmup_steps = int(warmup_steps)
        self.success_tolerance = float(success_tolerance)
        with mujoco_warnings_to_debug_log():
            super().__init__(
                ctrl_cost_weight=ctrl_cost_weight,
                reset_noise_scale=reset_noise_scale,
                render_mode=render_mode,
                width=width,
                height=height,
            )
        self.observation_space = spaces.Dict(
            {
                "policy": spaces.Box(-np.inf, np.inf, shape=(self.model.nq - 1 + 1,), dtype=np.float32),
                "privileged": spaces.Box(-np.inf, np.inf, shape=(3 + self.model.nv - 1,), dtype=np.float32),
            }
        )
        self.nominal_body_mass = self.model.body_mass.copy()
        self.nominal_body_inertia = self.model.body_inertia.copy()
        self.nominal_geom_friction = self.model.geom_friction.copy()
        self.nominal_gear = self.model.actuator_gear.copy()
        self.scales = np.ones(3)
        self._steps = 0
        self._error_sum = 0.0
        self._error_count = 0

    def apply_scales(self, mass: float, friction: float, strength: float) -> None:
        """Set the model's masses, friction and gears to ``scale * nominal``."""
        self.scales = np.array([mass, friction, strength], dtype=np.float64)
        self.model.body_mass[:] = self.nominal_body_mass * mass
        self.model.body_inertia[:] = self.nominal_body_inertia * mass
        self.model.geom_friction[:] = self.nominal_geom_friction
        self.model.geom_friction[:, 0] = self.nominal_geom_friction[:, 0] * friction
        self.model.actuator_gear[:] = self.nominal_gear * strength

    def _get_obs(self) -> dict[str, np.ndarray]:
        qpos, qvel = self.data.qpos, self.data.qvel
        return {
            "policy": np.concatenate([qpos[1:], qvel[2:3]]).astype(np.float32),
            "privileged": np.concatenate([self.scales, qvel[0:2], qvel[3:]]).astype(np.float32),
        }

    def _success(self) -> bool:
        if self._error_count == 0:
            return False
        return self._error_sum / self._error_count < self.success_tolerance * self.speed_scale

    def step(self, action: np.ndarray) -> tuple[dict[str, np.ndarray], float, bool, bool, dict[str, Any]]:
        x_before = float(self.data.qpos[0])
        self.do_simulation(action, self.frame_skip)
        x_velocity = (float(self.data.qpos[0]) - x_before) / self.dt
        self._steps += 1
        error = abs(x_velocity - self.target_speed)
        if self._steps > self.warmup_steps:
            self._error_sum += error
            self._error_count += 1
        tracking = 1.0 - error / self.speed_scale
        ctrl_cost = self.control_cost(action)
        info = {
            "x_velocity": x_velocity,
            "speed_error": error,
            "reward_tracking": tracking,
            "reward_ctrl": -ctrl_cost,
            "is_success": self._success(),
        }
        if self.render_mode == "human":
            self.render()
        return self._get_obs(), tracking - ctrl_cost, False, False, info

    def reset_model(self) -> dict[str, np.ndarray]:
        rng = self.np_random
        self.apply_scales(
            rng.uniform(*self.mass_range),
            rng.uniform(*self.friction_range),
            rng.uniform(*self.strength_range),
        )
        self._steps, self._error_sum, self._error_count = 0, 0.0, 0
        return super().reset_model()

    def _get_reset_info(self) -> dict[str, Any]:
        return {"x_velocity": float(self.data.qvel[0]), "is_success": False}
